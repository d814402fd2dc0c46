"""Identity: the mesh CA, its trust bundle, and the certificates it issues."""

from ._ca import CertificateRequestError, MeshCA, load_bundle, verify_issued_by

__all__ = ["CertificateRequestError", "MeshCA", "load_bundle", "verify_issued_by"]
