"""Errors a user can fix: one line, naming the file, table and key, with a hint."""

from __future__ import annotations


class UserError(Exception):
    """Bad input. The CLI prints ``str(err)`` on one line and exits with code 2."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, table: str | None = None,
                 key: str | None = None, hint: str | None = None):
        self.message, self.file, self.table, self.key, self.hint = message, file, table, key, hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.table:
            where.append(f"[{self.table}]")
        if self.key:
            where.append(self.key)
        text = (" ".join(where) + ": " if where else "") + self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return " ".join(text.split())  # always one line

    def located(self, *, file=None, table=None, key=None) -> "UserError":
        """The same error with the location filled in where it was still missing."""
        return UserError(self.message, file=self.file or file, table=self.table or table,
                         key=self.key or key, hint=self.hint)


class ModelTooLarge(UserError):
    """A preset whose weights alone exceed this machine's memory (``tunerkit estimate`` offers
    to predict it for another device instead)."""


class RowFailed(Exception):
    """A row could not finish; recorded as a failed cell with ``reason``, the run goes on."""


class MissingPackage(RowFailed):
    """A row needs an optional package that is not installed: recorded as skipped, the run goes on."""

    def __init__(self, module: str, package: str | None = None):
        self.module, self.package = module, package or module.replace("_", "-")
        super().__init__(f"needs {self.package} (pip install {self.package})")
