"""Test-only hooks for tests/test_kill_resume.py, loaded by the training subprocess through
PYTHONPATH (never installed). Both are driven by environment variables:

KILL_SCORES   "0.3,0.5,..."  the UNeXt validation Dice of each epoch (a scripted trajectory,
              so that the best epoch is known and later epochs are worse)
KILL_AT       "iteration:N"  SIGKILL after the trainer's N-th iteration (mid-epoch)
              "model:N"      SIGKILL in the middle of the N-th write of model.pt of this process
              "state:N"      SIGKILL in the middle of the N-th write of the training state
KILL_RANK     "1"            kill only the torchrun worker of this RANK (default: any process)
KILL_ENGINE   the engine class KILL_AT iteration:N watches (default SemiSupervisedTrainer)
KILL_ONCE     a file path    kill only while this file is absent, creating it first (a group that
                             torchrun restarts is then not killed again)
A kill mid-write writes half the bytes of the file first, into whatever file the code
under test opened (the target itself when it writes in place, a temporary file otherwise).
"""

import io
import os
import signal
import sys

sys.path.insert(0, os.environ.get("KILL_REPO", os.getcwd()))


def _armed() -> bool:
    """False once a KILL_ONCE kill has happened."""
    once = os.environ.get("KILL_ONCE")
    return not (once and os.path.exists(once))


def _die():
    once = os.environ.get("KILL_ONCE")
    if once:
        open(once, "w").close()
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


_scores = os.environ.get("KILL_SCORES")
if _scores:
    from custom.evaluation.metrics import PolicyMeanDice

    _table = [float(s) for s in _scores.split(",")]
    _completed = PolicyMeanDice.completed

    def completed(self, engine, name):
        _completed(self, engine, name)
        if name == "val_mean_dice":
            engine.state.metrics[name] = _table[engine.state.epoch - 1]

    PolicyMeanDice.completed = completed

_at = os.environ.get("KILL_AT")
if _at and os.environ.get("KILL_RANK") not in (None, "", os.environ.get("RANK", "0")):
    _at = None  # another torchrun worker is the one to kill
if _at:
    _kind, _n = _at.split(":")
    _n = int(_n)
    if _kind == "iteration":
        from ignite.engine import Engine, Events

        _fire = Engine._fire_event

        def _fire_event(self, event_name, *args, **kwargs):
            out = _fire(self, event_name, *args, **kwargs)
            if (
                event_name == Events.ITERATION_COMPLETED
                and type(self).__name__ == os.environ.get("KILL_ENGINE", "SemiSupervisedTrainer")
                and self.state.iteration == _n
                and _armed()
            ):
                _die()
            return out

        Engine._fire_event = _fire_event
    else:
        import torch

        _save, _count = torch.save, [0]

        def save(obj, f, *args, **kwargs):
            is_state = isinstance(obj, dict) and "trainer" in obj
            if is_state == (_kind == "state"):
                _count[0] += 1
                if _count[0] == _n and _armed():
                    buf = io.BytesIO()
                    _save(obj, buf, *args, **kwargs)
                    data = buf.getvalue()
                    out = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
                    out.write(data[: len(data) // 2])
                    out.flush()
                    _die()
            return _save(obj, f, *args, **kwargs)

        torch.save = save
