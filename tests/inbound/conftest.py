from .shells import make_runtime, make_shell, shell_kind

__all__ = ["make_runtime", "make_shell", "shell_kind"]
