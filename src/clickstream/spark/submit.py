"""The file to give `spark-submit`: runs `clickstream consume --engine spark` in its driver.

    spark-submit --master URL ... "$(python -m clickstream.spark.submit --path)" [OPTIONS]

OPTIONS are those of `clickstream consume` (`--until-idle`, ...); settings come from
`CLICKSTREAM_*` variables or the file in `CLICKSTREAM_CONFIG`. spark-submit's `--master`
and `--conf` apply; `spark.master` and `--master` of clickstream do not.
"""

from __future__ import annotations

import sys

from clickstream.cli import main


def run(argv: list[str]) -> int:
    if argv == ["--path"]:
        print(__file__)
        return 0
    return main(["consume", "--engine", "spark", *argv])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
