"""Optional TensorBoard logging: the per-round records ``train()`` passes to ``on_round``, as scalars.

TensorBoard is an optional dependency (``pip install tensorboard``); without it, creating a
:class:`TensorBoardLogger` raises a one-line FedrecError saying so.

    logger = TensorBoardLogger(Path("runs/tb"))
    train(config, out_dir, on_round=logger)   # step = round (epoch in centralised mode)
    logger.close()
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import Any

from fedrec.errors import FedrecError

INSTALL_HINT = "TensorBoard logging needs the tensorboard package: pip install tensorboard (or drop --tensorboard)"
_GROUPS = {
    "train_loss": "train/loss", "clients": "train/clients", "seconds": "time/seconds",
    "bytes_up": "communication/bytes_up", "bytes_down": "communication/bytes_down",
    "epsilon": "privacy/epsilon", "delta": "privacy/delta",
}


def scalar_tag(key: str) -> str:
    """TensorBoard tag of a record key: ``val_rmse`` -> ``val/rmse``, ``rmse`` -> ``test/rmse``."""
    if key in _GROUPS:
        return _GROUPS[key]
    if key.startswith("val_"):
        return f"val/{key[len('val_'):]}"
    return f"test/{key}"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a round record by tag (the round itself is the step, not a scalar)."""
    return {scalar_tag(key): float(value) for key, value in record.items()
            if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class TensorBoardLogger:
    """Writes each round record to a TensorBoard event file in ``log_dir``; callable as ``on_round``."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FedrecError(INSTALL_HINT) from None
        try:
            self._writer = SummaryWriter(log_dir=str(log_dir))
        except OSError as error:
            raise FedrecError(f"cannot write TensorBoard logs to {log_dir} ({error.strerror}); "
                              "choose another --tensorboard folder") from None
        self.log_dir = Path(log_dir)

    def __call__(self, record: dict[str, Any]) -> None:
        step = int(record["round"])
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()  # one flush per round: the dashboard updates while training runs

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()
