"""Where a local cluster keeps its processes' data and its connection settings (``cluster.json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

SETTINGS_FILE = "cluster.json"


@dataclass(slots=True)
class LocalSettings:
    """Ports chosen when a local cluster first started; kept so a restart comes back on the same ones
    (node addresses are recorded in the control plane). `metrics_ports`: each router's metrics endpoint, in
    router order (``rankshard cluster up``; none for `rankshard demo`)."""

    postgres_port: int
    node_ports: list[int] = field(default_factory=list)
    router_port: int = 50051
    auth: bool = False
    """Whether the routers require the bearer tokens of ``tokens.json`` (``cluster up --auth``)."""
    tls: bool = False
    """Whether the routers serve TLS with the certificate of ``tls/`` (``cluster up --tls``)."""
    metrics_ports: list[int] = field(default_factory=list)

    @property
    def control_plane(self) -> str:
        return f"postgresql://rankshard@127.0.0.1:{self.postgres_port}/rankshard"

    @classmethod
    def load(cls, data_dir: Path) -> LocalSettings | None:
        path = data_dir / SETTINGS_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / (SETTINGS_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(data_dir / SETTINGS_FILE)


def control_plane_dsn(data_dir: Path, explicit: str | None) -> str:
    """`--control-plane` (or RANKSHARD_CONTROL_PLANE), else the local cluster's in `data_dir`."""
    if explicit:
        return explicit
    settings = LocalSettings.load(data_dir)
    if settings is None:
        raise click.ClickException(
            f"no control plane: pass --control-plane DSN (or set RANKSHARD_CONTROL_PLANE), "
            f"or start a local cluster with `rankshard --data-dir {data_dir} cluster up`"
        )
    return settings.control_plane
