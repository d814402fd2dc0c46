"""The example mesh that ``asgimesh demo`` runs: three services, a control plane, some traffic."""
