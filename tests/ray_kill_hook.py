"""Ray worker setup hook for tests/test_ann_ray.py: lets a test kill the worker process encoding the first chunk.

Ray runs `setup` in every worker process it starts for the test session. The patched encoder kills its own process
(SIGKILL: no cleanup, like an OOM kill or a lost node) on the first chunk after the test creates the file named by
TERNARY_HF_TEST_KILL_FILE; renaming that file first makes sure exactly one worker dies.
"""

import os
import signal


def setup() -> None:
    from ternary_hf.ann import ray_encode

    original = ray_encode.CorpusEncoder.__call__

    def maybe_die(self, batch):
        armed = os.environ.get("TERNARY_HF_TEST_KILL_FILE")
        if armed:
            try:
                os.rename(armed, armed + ".fired")
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, batch)

    ray_encode.CorpusEncoder.__call__ = maybe_die
