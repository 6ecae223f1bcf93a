"""The study file's schema: every key of the original fedflow, plus fedflow's own.

Unknown keys and wrong types are errors (the original silently ignored them); ``load.py`` turns
pydantic's errors into one line naming the file, the key and the closest valid key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Client", "Debug", "Study"]

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class Debug(_Strict):
    """``[debug]``: diagnostics. ``verbose`` logs sites at DEBUG level and shows tracebacks."""

    verbose: bool = False
    keep_remote: bool = False
    """Leave the study's working folder on remote sites after the run (default: it is kept only
    for data and the prepared environment; run files are removed)."""

    # -- keys of the original fedflow's [debug] (see docs/original-fedflow.md) -----------------
    timeout: int | None = Field(default=None, gt=0)
    """The original's seconds to wait for the whole run to finish; fedflow uses it as the
    study's ``timeout`` when the study sets none (see ``fedflow.study.original``)."""
    nodeps: bool | None = None
    """The original's ``pip install --no-deps`` on each VM: no effect here (a notice says so)."""
    reinstall: bool | None = None
    """The original's ``pip install --force-reinstall`` on each VM: no effect here."""
    vmonly: bool | None = None
    """The original's "launch the Vagrant VMs and exit": no effect here (no VMs)."""


class Client(_Strict):
    """One ``[[clients]]`` entry: a site. Without ``hostname`` it is a local site."""

    name: str = ""
    fc_username: str | None = None
    data: list[str] = Field(default_factory=list)
    coordinator: bool = False
    username: str | None = None
    hostname: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    sshkey: str | None = None
    workdir: str | None = None
    """Remote sites: the study's working folder there (default ``~/.fedflow/<study name>``)."""
    python: str = "python3"
    """Remote sites: the Python used to create the site's environment."""
    install: Literal["wheels", "index"] = "wheels"
    """Remote sites: ``wheels`` uploads fedflow and every dependency as wheels (no internet needed
    at the site); ``index`` uploads fedflow's wheel and lets the site's pip fetch the rest."""
    system_packages: bool = False
    """Remote sites: the venv also sees the site Python's own packages; those at exactly the
    coordinator's versions (torch 2.13.0+cpu, say) are neither sent nor installed."""
    controller: str | None = None
    """FeatureCloud platform: this site's local controller URL (default http://localhost:8000)."""
    sep: str | None = None
    """Field separator of this site's CSV/TSV files (default ``,`` for .csv, tab for .tsv)."""
    header: bool = True
    """False: the files have no header line; ``columns`` gives the column names."""
    columns: list[str] | None = None
    """The column names of files without a header (``header = false``)."""

    dataset: str | None = None
    """A dataset the site's own configuration names (instead of ``data`` paths): what a defended
    site (a bare ``fedflow node``) serves."""
    managed: bool = False
    """Remote sites: the operator runs the agent (a forced command in ``authorized_keys``);
    fedflow provisions, stages and transfers nothing there and only speaks the protocol."""

    @property
    def is_local(self) -> bool:
        """True when the site runs as a subprocess on this machine."""
        return self.hostname is None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if value and not _SAFE_NAME.fullmatch(value):
            raise ValueError(
                f"site name {value!r} may hold only letters, digits, '.', '_' and '-' "
                "(at most 64, not starting with '.' or '-'): it names files and folders"
            )
        return value

    @field_validator("data", mode="before")
    @classmethod
    def _one_file(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("sep")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            raise ValueError('must be one character, e.g. ";" or "\\t" (a tab)')
        return value

    @model_validator(mode="after")
    def _dataset_or_data(self) -> Client:
        if self.dataset is not None and self.data:
            raise ValueError('give either dataset = "…" or data = [...], not both')
        if self.managed and self.hostname is None:
            raise ValueError("managed = true is for remote sites: set hostname")
        if self.managed and self.data:
            raise ValueError(
                "a managed site serves its own datasets: replace data = [...] by "
                'dataset = "<name in the site\'s configuration>"'
            )
        return self

    @model_validator(mode="after")
    def _names_without_header(self) -> Client:
        if not self.header and not self.columns:
            raise ValueError("header = false needs columns = [...] giving the column names")
        if self.header and self.columns is not None:
            raise ValueError(
                "columns = [...] names the columns of files without a header: set header = false"
            )
        if self.columns is not None:
            dupes = sorted({c for c in self.columns if self.columns.count(c) > 1})
            if dupes:
                raise ValueError(f"duplicate names in columns: {', '.join(dupes)}")
        return self

    def reading(self) -> dict[str, Any]:
        """Return how the site reads its files: ``sep``, ``header`` and ``columns``, as the
        ``Setup`` message and ``read_table`` take them."""
        return {"sep": self.sep, "header": self.header, "columns": self.columns}


class Study(_Strict):
    """A whole study: the app and its parameters, the sites, where results go."""

    # -- keys of the original fedflow -----------------------------------------------------------
    project_id: int | None = None
    tool: str | None = None
    sim: bool = False
    outdir: str = "results"
    provision_script: str | None = None
    skip_data_transfer: bool = False
    skip_credential_transfer: bool = False
    skip_result_transfer: bool = False
    debug: Debug = Field(default_factory=Debug)
    clients: list[Client] = Field(default_factory=list)

    # -- fedflow's own ------------------------------------------------------------------------
    name: str = ""
    platform: Literal["native", "featurecloud"] = "native"
    app: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    min_count: int = Field(default=5, ge=1, le=2**63 - 1)
    timeout: float = Field(default=300.0, gt=0)
    """Seconds a site may take to answer one round (starting, loading data and finishing may take
    at least 120 s whatever this says)."""
    dropna: bool = False
    """Drop rows with a missing value in a column the app needs (default: missing values are an error)."""
    trust_new_hosts: bool = False
    """Remote sites: accept and record host keys never seen before (changed keys are always refused)."""
    secure: bool = False
    """Secure aggregation: the coordinator receives only masked vectors and learns only the sum
    over sites of each summed phase, exactly (docs/secure-aggregation.md). Apps that cannot run
    so are refused with the reason ``fedflow apps`` shows."""
    secure_threshold: int | None = Field(default=None, ge=2)
    """With ``secure = true``: how many sites must take part to unmask a sum (Shamir threshold);
    at least a majority of the sites, at most all of them (default: a majority)."""

    # Where the study came from (set by the loader, not by the file).
    source: Path | None = Field(default=None, exclude=True)
    source_text: str | None = Field(default=None, exclude=True, repr=False)
    notices: list[str] = Field(default_factory=list, exclude=True, repr=False)
    """What the loader did with keys of the original fedflow (set by the loader, shown by the CLI)."""

    @model_validator(mode="after")
    def _check(self) -> Study:
        coordinators = [c.name or f"#{i + 1}" for i, c in enumerate(self.clients) if c.coordinator]
        if len(coordinators) > 1:
            raise ValueError(f"more than one coordinator client: {', '.join(coordinators)}")
        for i, client in enumerate(self.clients):
            if not client.name:
                client.name = f"site-{i + 1}"
        seen: dict[str, int] = {}
        for i, client in enumerate(self.clients):
            if client.name in seen:
                raise ValueError(
                    f"duplicate site name '{client.name}' (clients {seen[client.name] + 1} and {i + 1})"
                )
            seen[client.name] = i
        if self.platform == "native" and self.clients and not self.app:
            raise ValueError('no app given: set app = "<name>" (see `fedflow apps`)')
        if self.platform == "featurecloud" and self.tool is None and self.project_id is None:
            raise ValueError("platform 'featurecloud' needs tool = \"<app slug>\" or project_id")
        self._check_secure()
        return self

    def _check_secure(self) -> None:
        n = len(self.clients)
        if self.secure_threshold is not None and not self.secure:
            raise ValueError("secure_threshold is for secure = true; set secure = true or drop it")
        if self.secure and self.platform != "native":
            raise ValueError("secure = true runs on the native platform only")
        if self.secure and self.clients and n < 2:
            raise ValueError("secure = true needs at least two sites (a sum over one is its own)")
        low = n // 2 + 1
        if self.secure_threshold is not None and n and not low <= self.secure_threshold <= n:
            raise ValueError(
                f"secure_threshold = {self.secure_threshold} must lie in {low}..{n} for {n} "
                "sites: at least a majority, so that no minority of sites (with the "
                "coordinator) can unmask one site"
            )

    @property
    def folder(self) -> Path:
        """The folder relative paths resolve against (the study file's folder, else the cwd)."""
        return self.source.parent if self.source else Path.cwd()

    @property
    def coordinator(self) -> Client | None:
        """The client marked ``coordinator = true``, if any."""
        return next((c for c in self.clients if c.coordinator), None)

    def resolve(self, path: str) -> Path:
        """Return ``path`` (``~`` expanded) resolved against the study's folder."""
        expanded = Path(path).expanduser()
        return expanded if expanded.is_absolute() else (self.folder / expanded).resolve()
