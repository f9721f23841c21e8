"""User-facing errors: each renders as one line naming the file, key or URL and the reason."""


class NrtError(Exception):
    """Base class for errors a user or an operator can cause and fix; the CLI exits 2 on them."""


class ConfigError(NrtError):
    def __init__(self, where: str, reason: str):
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {reason}")


class DataError(NrtError):
    """A bad input file: truncated, corrupt, of another product, all fill..."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class FetchError(NrtError):
    def __init__(self, url: str, reason: str):
        self.url, self.reason = url, reason
        super().__init__(f"{url}: {reason}")


class CatalogError(NrtError):
    pass


class CatalogUnavailable(CatalogError):
    """The database cannot be reached or written now (down, restarting, disk full); waiting may cure it."""


class LeaseLost(NrtError):
    """A write refused because this process no longer holds the job's lease (another worker took it over)."""


class StorageError(NrtError):
    """A file that cannot be written (disk full, read-only, not a directory); names the path and the OS reason."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: cannot write: {reason}")

    @classmethod
    def from_os_error(cls, path, exc: OSError) -> "StorageError":
        return cls(getattr(exc, "filename", None) or path, exc.strerror or str(exc))
