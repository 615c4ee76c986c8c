"""`clickstream ARGS` whose Spark driver dies at the worst moment: a test hook, kept out of
the product.

    python tests/spark_crash.py N consume --engine spark ...

SIGKILLs the job (the driver, its JVM and its local Python workers: their process group,
when it is ours) right after the Nth micro-batch with rows committed in PostgreSQL and
before Spark recorded the micro-batch as done.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from clickstream.cli import main
from clickstream.spark.sink import BatchSink


def crash_after(batches: int) -> None:
    write = BatchSink.__call__

    def write_then_die(self: BatchSink, frame, batch_id: int) -> None:
        write(self, frame, batch_id)
        if self.stats.batches >= batches:
            logging.getLogger("clickstream.spark").warning("killing the Spark job now")
            if os.getpgid(0) == os.getpid():
                os.killpg(0, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    BatchSink.__call__ = write_then_die


if __name__ == "__main__":
    crash_after(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
