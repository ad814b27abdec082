"""``python -m sagastack run|demo|check|bench|chaos`` — see ``make help``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from saga_kit.kafka_acls import COMMAND_SENDER
from sagastack.apache_kafka import SASL_USER, ApacheKafka
from sagastack.embedded import PortTaken, RunDirectoryInUse
from sagastack.system import SERVICES, BadSetting, StartFailed, System, choose_broker, choose_secure_broker

RUN_ROOT = Path(".run")


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    if args.secure:
        broker, note = choose_secure_broker(), None
    else:
        broker, note = choose_broker()
    if note:
        print(note, flush=True)
    system = System(Path(args.run_dir), broker_kind=broker, kafka_sasl_ssl=args.secure)
    system.claim()  # a run already there is told before anything is said to start
    # an earlier run's leftovers (its supervisor and watchdog killed together) hold its
    # ports: stopped first, or the check below took them for another program's (a trial)
    system.stop_leftovers()
    try:
        system.check_ports()  # and ports that cannot work
    except (BadSetting, PortTaken):
        system.give_up()
        raise
    print("starting broker, database, payment provider and services …", flush=True)
    with system:  # Ctrl-C while it starts interrupts the start (and stops what it started)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # started: Ctrl-C stops the loop below
            signal.signal(sig, lambda *_: stop.set())
        print(f"\n  {'broker':<13} {system.broker_description()}")
        for name, url in system.database_urls.items():
            print(f"  {name:<13} database {url}")
        if system.provider_database_url:
            print(f"  {'provider':<13} database {system.provider_database_url}")
        for name in SERVICES:
            print(f"  {name:<13} {system.url(name)}  (health: {system.url(name)}/health/ready)")
        if system.provider is not None:
            print(f"  {'provider':<13} {system.provider_url}  (card processor simulator; faults: /v1/faults)")
        else:
            print(f"  {'provider':<13} {system.provider_url}  (PAYMENT_PROVIDER_URL: no simulator started)")
        # the operator's token rides in the fragment: it never reaches a server's log
        print(f"\n  dashboard:      {system.url('order_svc')}/dashboard#token={system.token()}")
        print(f"  order API docs: {system.url('order_svc')}/docs")
        print(f"  traces:         {system.run_dir / 'traces'}   (sagactl --help for the CLI)")
        env = system.sagactl_env()
        default_dir = system.run_dir == (RUN_ROOT / "stack").resolve()
        if (
            env
            != {
                **{f"SAGACTL_{prefix}_URL": f"http://127.0.0.1:{port}" for prefix, port in SERVICES.values()},
                "SAGACTL_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
            }
            or not default_dir
        ):  # sagactl's defaults are make run's: tell it
            env["SAGA_ISSUER_DIR"] = str(system.run_dir / "keys" / "issuer")
            print("  sagactl:        export " + " ".join(f"{k}={v}" for k, v in env.items()))
        print("  tokens:         export SAGA_TOKEN=$(.venv/bin/sagactl token)   (an operator's;")
        print("                  a customer's: .venv/bin/sagactl token --subject alice --role customer)")
        elsewhere = "" if default_dir else f" RUN_DIR={system.run_dir}"
        print(f"  invariants:     make invariants{elsewhere}   (once it settles: docs/design.md §6)")
        if isinstance(system.broker, ApacheKafka) and system.broker.sasl_ssl:
            admin = system.broker.client_env(SASL_USER)
            print(
                "  kafka:          SASL_SSL, each service its own user (sagactl kafka-acls); sagactl as"
                f" {COMMAND_SENDER}, which may write orders.commands only.\n"
                f"                  The administrator: KAFKA_SASL_USERNAME={admin['KAFKA_SASL_USERNAME']}"
                f" KAFKA_SASL_PASSWORD_FILE={admin['KAFKA_SASL_PASSWORD_FILE']}"
            )
        # its pid is said: started in the background, make's wrapper shell was the pid a
        # newcomer had, and killing it stopped nothing (a trial)
        print(
            f"  logs: {system.run_dir / 'logs'}\n\nready — Ctrl-C, or kill {os.getpid()}, stops everything",
            flush=True,
        )
        system.keep_running(stop, again="make run")
        print("stopping …", flush=True)
    print("stopped", flush=True)
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _install_signal_handlers() -> None:
    """SIGTERM and SIGHUP (a closed terminal) unwind like Ctrl-C, so every System stops
    what it started on the way out; and Ctrl-C (SIGINT) does, even where it came ignored:
    a shell starts a background job so (an operator trial: a kept demo started with &
    could not be stopped with kill -INT)."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="sagastack")
    sub = parser.add_subparsers(dest="command", required=True)
    running = sub.add_parser(
        "run",
        help="start everything and wait for Ctrl-C",
        # the ports were only in the README, and a second stack needs its own (a newcomer trial)
        epilog="ports: ORDER_HTTP_PORT, INVENTORY_HTTP_PORT, PAYMENT_HTTP_PORT (8001-8003),"
        " PROVIDER_HTTP_PORT (8004) and SAGA_KAFKA_PORT (9092) in the environment; once it is"
        " ready it prints the line that points sagactl at them and its keys (export SAGACTL_ORDER_URL=..."
        " SAGA_ISSUER_DIR=...) when they are not the defaults",
    )
    running.add_argument(
        "--run-dir",
        default=str(RUN_ROOT / "stack"),
        help="where its databases, logs, keys and traces live (a second stack needs its own, and ports)",
    )
    running.add_argument(
        "--secure",
        action="store_true",
        help="Apache Kafka over SASL_SSL, each service its own Kafka user allowed only what it does"
        " (its ACLs: sagactl kafka-acls); needs Java 17+ and Maven",
    )
    running.set_defaults(func=run)

    from sagastack import bench, chaos, check, demo, screenshots

    demo.add_parser(sub)
    check.add_parser(sub)
    bench.add_parser(sub)
    chaos.add_parser(sub)
    screenshots.add_parser(sub)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    _install_signal_handlers()
    try:
        sys.exit(main())
    except BadSetting as bad:  # a configuration error: exit 2, as a service's
        print(f"sagastack: {bad}", file=sys.stderr)
        sys.exit(2)
    except (RunDirectoryInUse, PortTaken, StartFailed) as refused:  # it says it all: no traceback
        print(f"sagastack: {refused}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted — everything it started has stopped", file=sys.stderr)
        sys.exit(130)
