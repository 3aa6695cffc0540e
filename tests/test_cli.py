"""What the entry points share (normlab.runner.cli), with the real Lightning and logging."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO


def test_lightning_imported_before_logging_is_set_up_still_logs_through_the_root():
    # In a fresh process, as in a script that imports Lightning at the top: with no root
    # handler yet, lightning.pytorch and lightning.fabric give themselves a console handler
    # and stop propagating. quiet_lightning, called once logging is set up, undoes that.
    script = textwrap.dedent(
        """
        import io, logging
        import lightning.pytorch, lightning.fabric
        from lightning.pytorch.utilities import rank_zero_info

        assert not lightning.pytorch._logger.propagate  # Lightning's own setup, as feared
        stream = io.StringIO()
        logging.basicConfig(level=logging.INFO, stream=stream, format="%(name)s: %(message)s")
        from normlab.runner.cli import quiet_lightning

        quiet_lightning()
        rank_zero_info("from lightning.pytorch")
        logging.getLogger("lightning.fabric.utilities.seed").info("from lightning.fabric")
        for name in ("lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            assert logger.propagate and not logger.handlers, name
        print(stream.getvalue(), end="")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [
        "lightning.pytorch.utilities.rank_zero: from lightning.pytorch",
        "lightning.fabric.utilities.seed: from lightning.fabric",
    ]
    assert "from lightning" not in proc.stderr  # not printed by Lightning's own handlers too
