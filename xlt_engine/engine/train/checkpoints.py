"""A run folder's checkpoints: ``ckpt-<step>/`` holds the model (``save_model``: for BERT,
safetensors with Hugging Face names) and ``state.pt`` (optimizer, scaler, step, data position,
the training settings, every rank's RNG states of python / numpy / torch / cuda);
``run_dir/latest`` names the newest complete one and is replaced atomically after both are
written, so a kill at any moment leaves a usable checkpoint. Weights that are not finite are
never saved; a resume with other training settings is refused by name (``config_changes``)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from xlt_engine.engine.train import distributed
from xlt_engine.fileio import atomic_file, atomic_write_text, folder_bytes
from xlt_engine.inputs import check_regular, read_text


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)  # its key array as a tensor: no pickle needed
    np_state["state"]["key"] = torch.from_numpy(np_state["state"]["key"].astype(np.int64))
    state = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np_state["state"]["key"] = np_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "latest"
    if not pointer.is_file():
        return None
    folder = run_dir / read_text(pointer, limit=4096).strip()
    if not (folder / "state.pt").is_file():
        raise ValueError(f"{pointer} names {folder.name}, which has no state.pt")
    return folder


def drop_checkpoints(folder: Path) -> int:
    """Remove the loop checkpoints (``latest`` and ``ckpt-*/``, optimizer state included) of
    every training run at or below ``folder`` (a stage's own, a self-training step's, a
    co-training view's): what a finished stage no longer needs. Each run's ``latest`` goes
    first, so a kill midway leaves no pointer to a half-removed folder. Returns the bytes freed."""
    runs = {p.parent for p in folder.rglob("latest") if p.is_file()}
    runs |= {p.parent.parent for p in folder.rglob("ckpt-*/state.pt")}
    freed = 0
    for run in sorted(runs):
        (run / "latest").unlink(missing_ok=True)
        for ckpt in sorted(p for p in run.glob("ckpt-*") if p.is_dir()):
            freed += folder_bytes(ckpt)
            shutil.rmtree(ckpt)
    return freed


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters holding inf or NaN (one host sync for all of them)."""
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if not named:
        return []
    ok = torch.stack([p.detach().isfinite().all() for _, p in named]).cpu()
    return [n for (n, _), good in zip(named, ok.tolist(), strict=True) if not good]


def non_finite_state(state, prefix: str = "") -> list[str]:
    """Where a checkpoint's state (optimizer moments, scaler, nested dicts and lists) holds a
    floating tensor or number with NaN or inf, as dotted paths (``optimizer.state.3.exp_avg``)."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and state.numel() and not bool(state.isfinite().all())
        return [prefix] if bad else []
    if isinstance(state, float):
        return [] if np.isfinite(state) else [prefix]
    if not isinstance(state, (dict, list, tuple)):
        return []
    items = state.items() if isinstance(state, dict) else enumerate(state)
    found = []
    for k, v in items:
        found += non_finite_state(v, f"{prefix}.{k}" if prefix else str(k))
    return found


def _shown(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def last_good(run_dir: Path) -> str:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return "no checkpoint was written yet (the run starts over)"
    return f"the last good checkpoint is {ckpt}"


class Checkpoints:
    """The checkpoints of one run folder: ``ckpt-<step>/`` with the model (``save_model``) and
    ``state.pt`` (optimizer, scaler, data position, every rank's RNG states), the ``latest``
    pointer replaced atomically after both are written, and pruning to ``keep`` folders."""

    def __init__(self, run_dir: Path, save_model, load_model, keep: int):
        self.run_dir, self.save_model, self.load_model, self.keep = (
            run_dir,
            save_model,
            load_model,
            keep,
        )
        self.rank, self.world = distributed.rank_world()

    def latest(self) -> Path | None:
        return latest_checkpoint(self.run_dir)

    def check_fresh(self) -> None:
        earlier = self.latest()
        if earlier is not None:
            raise ValueError(
                f"{self.run_dir} holds the checkpoints of an earlier run (latest: {earlier.name}): "
                "resume it (--resume) or choose another folder"
            )

    def load(self, model: nn.Module) -> dict:
        """Load the latest checkpoint's weights into ``model`` and this rank's RNG states;
        returns the rest of its state (optimizer, scaler, step, data position)."""
        ckpt = self.latest()
        if ckpt is None:
            raise ValueError(f"{self.run_dir}: nothing to resume (no checkpoint written yet)")
        try:
            check_regular(ckpt / "state.pt")
            state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, empty, not a zip, not torch's: its own words
            raise ValueError(
                f"{ckpt / 'state.pt'}: a damaged checkpoint (truncated or corrupt: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                f"{self._instead(ckpt)}"
            ) from None
        bad = non_finite_state({k: state.get(k) for k in ("optimizer", "scaler")})
        if bad:
            raise ValueError(
                f"{ckpt}: a damaged checkpoint: its optimizer / scaler state holds NaN or inf "
                f"({_shown(bad)}); resuming would train on it. Remove {ckpt} and point "
                f"{self.run_dir / 'latest'} at an earlier ckpt-*, or start the stage over"
            )
        try:
            self.load_model(model, ckpt / "model")
        except (ValueError, OSError) as err:
            raise ValueError(
                f"{ckpt}: a damaged checkpoint: {err}; {self._instead(ckpt)}"
            ) from None
        rng = state["rng"]
        if len(state.get("rng_ranks", ())) == self.world:
            rng = state["rng_ranks"][self.rank]  # each rank continues its own streams (dropout)
        _set_rng_state(rng)
        return state

    def _instead(self, damaged: Path) -> str:
        """What to do about the damaged latest checkpoint: resume from the newest complete
        one before it (the command that points ``latest`` at it), or start over."""
        earlier = sorted(
            p
            for p in self.run_dir.glob("ckpt-*")
            if p.is_dir()
            and p.name < damaged.name
            and (p / "state.pt").is_file()
            and (p / "state.pt").stat().st_size > 0
            and (p / "model").is_dir()
        )
        if not earlier:
            return (
                f"no earlier checkpoint is kept: remove {damaged} and {self.run_dir / 'latest'} "
                "to start the stage over"
            )
        return (
            f"the previous complete one is {earlier[-1].name}: resume from it with "
            f"`echo {earlier[-1].name} > {self.run_dir / 'latest'}`, then --resume again"
        )

    def save(self, model: nn.Module, step: int, state: dict) -> Path | None:
        """Every rank's RNG states are gathered (a collective: call on every rank); rank 0
        writes ``ckpt-<step>``, points ``latest`` at it and prunes older ones."""
        rng = _rng_state()
        rng_ranks = [rng]
        if self.world > 1:
            rng_ranks = [None] * self.world
            dist.all_gather_object(rng_ranks, rng)
        if self.rank != 0:
            return None
        bad = non_finite_state({k: state.get(k) for k in ("optimizer", "scaler")})
        if bad:  # never written: the latest checkpoint stays the last good one
            raise ValueError(
                f"{self.run_dir}: step {step}: the optimizer / scaler state holds NaN or inf "
                f"({_shown(bad)}); no checkpoint written, {last_good(self.run_dir)}"
            )
        folder = self.run_dir / f"ckpt-{step:08d}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.save_model(model, folder / "model")
        with atomic_file(folder / "state.pt") as f:
            torch.save({**state, "rng": rng, "rng_ranks": rng_ranks}, f)
        atomic_write_text(self.run_dir / "latest", folder.name + "\n")
        old = sorted(p for p in self.run_dir.glob("ckpt-*") if p.is_dir() and p != folder)
        for p in old[: max(0, len(old) - (self.keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
        return folder
