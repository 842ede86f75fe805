"""The laptop's side of a cluster: `synthray submit`, `jobs`, `logs`, `stop` (and `resume --submit`), talking to
the head's job API (`synthray.submit`). Bad input ends in one line; Ctrl-C while following stops only the following."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from synthray.core.registry import SynthrayError


def _cluster_args(parser: argparse.ArgumentParser, sends: bool = False) -> None:
    parser.add_argument("--address", help="the cluster's job API, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)")
    parser.add_argument("--insecure", action="store_true",
                        help="send the cluster token over plain http to a public address (default: https, or a loopback "
                             "or private address only)")
    if sends:
        parser.add_argument("--send-secrets", action="append", default=[], metavar="NAME[,NAME]",
                            help="put these environment variables into the job (Ray then stores them in plain text in "
                                 "its job table and logs; the cluster's secret store is the safe way, README \"Secrets\")")
        # Gone: it forwarded expiring AWS session tokens and stored long-lived keys in Ray's job table.
        parser.add_argument("--with-credentials", action="store_true", help=argparse.SUPPRESS)


def _submit(args: argparse.Namespace) -> int:
    """submit (and resume --submit): run the sweep as a Ray Job, then optionally follow it."""
    from synthray import submit

    if args.with_credentials:
        raise SynthrayError("--with-credentials is gone: the nodes read the bucket with their own role (cluster.yaml's "
                            "instance profile, cluster-gcp.yaml's service account); --send-secrets NAME sends one variable")
    what = ("run", list(args.overrides)) if args.command == "submit" else ("resume", args.resume_words)
    args.send_secrets = [n for given in args.send_secrets for n in given.split(",") if n]
    if args.send_secrets:
        submit.secrets_to_send(args.send_secrets)  # a name not set here is one line before the warning
        print(submit.send_warning(args.send_secrets), file=sys.stderr, flush=True)
    job = submit.submit(args.address, what[0], what[1], args.send_secrets, args.insecure)
    print(f"submitted {job}; follow it with: synthray logs {job} --follow", flush=True)
    if not args.follow:
        return 0
    args.job = job
    return _print_logs(args, submit.client(args.address, args.insecure), end_status=True)


def _jobs(args: argparse.Namespace) -> int:
    from synthray import submit

    print("\n".join(submit.list_jobs(submit.client(args.address, args.insecure))))
    return 0


def _stop(args: argparse.Namespace) -> int:
    from synthray import submit

    jobs = submit.client(args.address, args.insecure)
    submit.job_info(jobs, args.job)
    jobs.stop_job(args.job)
    print(f"stopping {args.job}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from synthray import submit

    return _print_logs(args, submit.client(args.address, args.insecure), end_status=args.follow)


def _print_logs(args: argparse.Namespace, jobs: Any, end_status: bool) -> int:
    """A job's log (followed until it ends with --follow); `end_status`: then its final status, and exit 1 unless
    it succeeded."""
    from synthray import submit

    if args.follow:
        try:
            for chunk in submit.follow_logs(jobs, args.job):
                print(chunk, end="", flush=True)
        except KeyboardInterrupt:
            # Only the following stops: the job goes on, and a resume now would start a second driver on its sweep.
            where = f" --address {args.address}" if args.address else ""
            print(f"\nsynthray: stopped following; job {args.job} keeps running on the cluster. Stop it with: "
                  f"synthray stop {args.job}{where}; follow it again with: synthray logs {args.job} --follow{where}",
                  file=sys.stderr)
            return 130
    else:
        submit.job_info(jobs, args.job)
        print(jobs.get_job_logs(args.job), end="")
    status = submit.job_info(jobs, args.job).status.value
    if end_status:
        print(f"job {args.job}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    return 0
