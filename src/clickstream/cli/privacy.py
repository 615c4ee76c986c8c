"""`clickstream forget-user`: erase a user everywhere, counters included."""

from __future__ import annotations

import argparse
import sys

from clickstream.cli._common import command
from clickstream.config import Settings
from clickstream.errors import UsageError
from clickstream.util.printable import printable


def _user_id(text: str) -> str:
    """The cleaning rules' ids: 1 to 128 characters, no control characters."""
    from clickstream.ingest.cleaning import MAX_ID_LENGTH

    if not text or len(text) > MAX_ID_LENGTH or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"a user id is 1 to {MAX_ID_LENGTH} printable characters, got {printable(text)}"
        )
    return text


def _confirmed(userid: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError(
            "forget-user asks for confirmation and stdin is not a terminal: pass --yes in scripts"
        )
    answer = input(
        f"Erase every stored row of user {printable(userid)}, their dead letters and their"
        " counts in the reports? This cannot be undone. Type yes to go on: "
    )
    return answer.strip().lower() == "yes"


def cmd_forget_user(settings: Settings, args: argparse.Namespace) -> int:
    from clickstream.lifecycle.privacy import user_hash
    from clickstream.reports.hours import suffix
    from clickstream.store.db import connect
    from clickstream.store.erasure import erase_user
    from clickstream.store.faults import database_errors

    if not settings.privacy_hash_key:
        raise UsageError(
            "privacy.hash_key is not set: set it (CLICKSTREAM_PRIVACY_HASH_KEY) to a long random"
            " secret; the erasure record keeps a keyed hash of the id, never the id"
        )
    if not args.yes and not _confirmed(args.user_id):
        print("nothing erased")
        return 1
    hashed = user_hash(settings.privacy_hash_key, args.user_id)
    with (
        connect(settings, autocommit=True) as conn,
        database_errors(role=conn.info.user, privileges="SELECT, INSERT, UPDATE, DELETE"),
    ):
        erasure = erase_user(conn, args.user_id, hashed)
    removed = ", ".join(f"{table} {n:,}" for table, n in erasure.rows_removed.items())
    print(f"erased user {printable(args.user_id)}: {erasure.total:,} rows removed ({removed})")
    print(f"recorded as erasure {erasure.id} under the keyed hash {hashed[:16]}…")
    if erasure.hours:
        first, last = suffix(erasure.hours[0]), suffix(erasure.hours[-1])
        print(
            f"report counters changed in {len(erasure.hours)} hours ({first} to {last}):"
            " `clickstream report --every-hour` rewrites those it wrote in the last 24 hours;"
            " `clickstream report --hour H` rewrites any other"
        )
    print(
        "not erased: the raw events on the Kafka topics until their retention ends; the"
        " consumers skip those from before this erasure (outcome erased)"
    )
    return 0


def register(sub) -> None:
    p = command(
        sub,
        "forget-user",
        cmd_forget_user,
        "erase a user everywhere, counters included",
        "Remove the user's views, order lines, derived rows (user_product_hours, report_buyers)"
        " and the dead letters whose payload names them, and take their contribution out of"
        " the report counters, so that a rerun of any hour's report equals one computed as if"
        " the user had never existed; all in one transaction, which pauses the ingest while it"
        " runs, so it is exact under a live consumer. Records an audit row with a"
        " keyed hash of the id (privacy.hash_key), never the id. The live view drops the user"
        " at once. Asks for confirmation on a terminal; without one it needs --yes.",
    )
    p.add_argument("user_id", type=_user_id, metavar="USER_ID", help="the id, as events carry it")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (for scripts)")
