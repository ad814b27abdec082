"""The README's Configuration table names the environment variables users set: each must
be one the code reads, under that very name (an audit found ``RELAY_ACK_WARNING_SECONDS``
documented while the services read only ``ORDER_RELAY_ACK_WARNING_SECONDS`` and its
siblings: setting it as the README says changed nothing). And each setting a service
reads is named somewhere in the README, so none is known only from the code."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from inventory_svc.settings import Settings as InventorySettings
from order_svc.settings import Settings as OrderSettings
from payment_provider.settings import Settings as ProviderSettings
from payment_svc.settings import Settings as PaymentSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS: tuple[type[BaseSettings], ...] = (
    OrderSettings,
    InventorySettings,
    PaymentSettings,
    ProviderSettings,
)
PREFIXES = ("ORDER", "INVENTORY", "PAYMENT")
#: Read by the supervisor, the CLIs or the tracing library rather than a settings class.
SOURCES = ("sagastack", "sagactl", "saga_kit")


def env_names(settings: type[BaseSettings]) -> set[str]:
    """Every environment variable ``settings`` reads: a field's aliases, or its
    ``env_prefix`` and name."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str) and c.isupper()}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def table_names() -> list[str]:
    """The variables in the first column of the README's Configuration table, ``<SVC>_X``
    as the three services' ``ORDER_X``, ``INVENTORY_X`` and ``PAYMENT_X``."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        for token in re.findall(r"`([A-Z<][A-Z0-9_<>]*)`", line.split(" | ")[0]):
            if token.startswith("<SVC>_"):
                names += [f"{p}_{token.removeprefix('<SVC>_')}" for p in PREFIXES]
            else:
                names.append(token)
    return names


def test_each_variable_in_the_configuration_table_is_read_under_that_name() -> None:
    read = set().union(*(env_names(s) for s in SETTINGS))
    code = "\n".join(p.read_text() for d in SOURCES for p in (ROOT / d).rglob("*.py"))
    names = table_names()
    assert len(names) > 60  # the table was found and read
    unread = [n for n in names if n not in read and f'"{n}"' not in code]
    assert unread == []


def test_each_setting_a_service_reads_is_named_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"[A-Z][A-Z0-9_]+", readme))
    for pattern in (r"<SVC>_([A-Z0-9_]+)", r"`\*_([A-Z0-9_]+)`"):  # <SVC>_X and *_X: each service's
        documented |= {f"{p}_{n}" for n in re.findall(pattern, readme) for p in PREFIXES}
    missing = sorted(n for s in SETTINGS for n in env_names(s) if n not in documented)
    assert missing == []
