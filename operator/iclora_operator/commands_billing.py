"""`iclora billing report`: units per namespace, summed from the operator's billing ledger.

Reads the store the operator writes to, configured as the operator is (ICLORA_STORE_* variables:
endpoint, bucket, keys, ledger prefix; see `iclora_operator.settings.StoreSettings`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys


def _month(text: str) -> str:
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected YYYY-MM")
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("billing", help="billing ledger of the operator (units per namespace)")
    sub = parser.add_subparsers(dest="billing_command", metavar="SUBCOMMAND")
    sub.required = True
    report = sub.add_parser("report", help="sum the ledger's billing units per namespace",
                            description="Sum the billing units recorded in the operator's ledger per namespace. "
                            "The store is read as the operator reads it (ICLORA_STORE_* variables).")
    report.add_argument("--month", type=_month, default=None,
                        help="YYYY-MM of completion (default: every month in the ledger)")
    report.add_argument("--namespace", default=None, help="only this namespace")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from iclora_api.objectstore import make_client
    from iclora_operator.ledger import read_records, summarize
    from iclora_operator.settings import StoreSettings

    cfg = StoreSettings()
    creds = cfg.operator_credentials()
    try:
        records = read_records(make_client(creds), cfg.bucket, args.month, cfg.ledger_prefix)
    except Exception as exc:  # minio/urllib3: a clear line, not a traceback
        sys.stderr.write(f"error: cannot read the ledger s3://{cfg.bucket}/{cfg.ledger_prefix}/ "
                         f"at {creds.endpoint}: {exc}\n")
        return 1
    totals = summarize(records, args.namespace)
    total_units = sum(t.units for t in totals)
    if args.json:
        doc = {"month": args.month, "namespace": args.namespace,
               "namespaces": [{"namespace": t.namespace, "trainings": t.trainings, "units": t.units}
                              for t in totals],
               "totalUnits": total_units}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Billing units, {args.month or 'all months'} (s3://{cfg.bucket}/{cfg.ledger_prefix}/)")
    table.add_column("namespace")
    table.add_column("trainings", justify="right")
    table.add_column("units", justify="right")
    for t in totals:
        table.add_row(t.namespace, str(t.trainings), str(t.units))
    table.add_section()
    table.add_row("total", str(sum(t.trainings for t in totals)), str(total_units))
    Console().print(table)
    return 0
