"""The ``[[tpm]]`` tables of the host TOML: which vTPMs a host has and how they are made.

Owns: :class:`TpmConfig` (validated, immutable) and :func:`parse_tpm_tables`, which takes the
already-parsed value of the ``tpm`` key (a list of tables); :func:`apfs.host.load_config`
takes it out of the host TOML.
Mistakes raise ``ValueError`` naming the table, key and value, as ``vdev.ap.host`` does.

Format::

    [[tpm]]
    name = "tpm0"                      # unique; letters, digits, '-', '_'; at most 32
    # version = "2.0"                  # the only version served (libtpms TPM 2.0)
    # pcr_banks = ["sha256"]           # banks allocated at manufacture; default: libtpms's
    #                                  # own (sha1, sha256, sha384, sha512)
    # ek_certificate = false           # true: provision an EK and its certificate in NV
    # profile = "default-v1"           # libtpms >= 0.10 only; refused when unsupported

``pcr_banks`` and ``ek_certificate`` are what the TPM is manufactured with
(:mod:`vdev.tpm.provision`: the banks, then the RSA 2048 EK's certificate in NV index
0x01C00002); a TPM started from saved state (``--state``, an imported ``stateblob``) keeps
what it was manufactured with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vdev.tpm.commands import HASH_ALGS

VERSIONS = ("2.0",)
DEFAULT_PCR_BANKS = ("sha1", "sha256", "sha384", "sha512")
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
KEYS = ("name", "version", "pcr_banks", "ek_certificate", "profile")


@dataclass(frozen=True)
class TpmConfig:
    """One vTPM: its name, TPM version, allocated PCR banks, EK certificate, profile."""

    name: str
    version: str = "2.0"
    pcr_banks: tuple[str, ...] = DEFAULT_PCR_BANKS
    ek_certificate: bool = False
    profile: str | None = None


def parse_tpm_tables(tables: Any, *, profiles_supported: bool) -> tuple[TpmConfig, ...]:
    """Validate the ``tpm`` key's value; ``profiles_supported`` is what the installed
    libtpms offers (``Tpm.info()["libtpms"]["profiles"]``), so ``profile`` is refused
    with the reason instead of being ignored."""
    if not isinstance(tables, list):
        raise ValueError(f"tpm: expected [[tpm]] tables, got {tables!r}")
    configs: list[TpmConfig] = []
    for index, table in enumerate(tables):
        where = f"tpm[{index}]"
        if not isinstance(table, dict):
            raise ValueError(f"{where}: expected a table, got {table!r}")
        for key in table:
            if key not in KEYS:
                raise ValueError(f"{where}: unknown key {key!r} (allowed: {', '.join(KEYS)})")
        configs.append(_parse_table(where, table, profiles_supported))
    seen: set[str] = set()
    for index, config in enumerate(configs):
        if config.name in seen:
            raise ValueError(f"tpm[{index}].name: {config.name!r} is configured twice")
        seen.add(config.name)
    return tuple(configs)


def _parse_table(where: str, table: dict[str, Any], profiles_supported: bool) -> TpmConfig:
    if "name" not in table:
        raise ValueError(f"{where}: needs a 'name'")
    name = table["name"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{where}.name: {name!r} is not 1-32 letters, digits, '-' or '_'")
    version = table.get("version", "2.0")
    if isinstance(version, float):  # `version = 2.0` unquoted is a TOML float
        version = f"{version:.1f}"
    if version not in VERSIONS:
        raise ValueError(f"{where}.version: {version!r} is not supported "
                         f"(supported: {', '.join(VERSIONS)}; libtpms serves TPM 2.0)")
    banks = table.get("pcr_banks", list(DEFAULT_PCR_BANKS))
    if not isinstance(banks, list) or not banks:
        raise ValueError(f"{where}.pcr_banks: {banks!r} is not a non-empty list of bank names")
    for bank in banks:
        if bank not in HASH_ALGS:
            raise ValueError(f"{where}.pcr_banks: unknown bank {bank!r} "
                             f"(known: {', '.join(HASH_ALGS)})")
        if banks.count(bank) > 1:
            raise ValueError(f"{where}.pcr_banks: {bank!r} is listed twice")
    ek = table.get("ek_certificate", False)
    if not isinstance(ek, bool):
        raise ValueError(f"{where}.ek_certificate: {ek!r} is not true or false")
    profile = table.get("profile")
    if profile is not None:
        if not isinstance(profile, str) or not profile:
            raise ValueError(f"{where}.profile: {profile!r} is not a profile name")
        if not profiles_supported:
            raise ValueError(f"{where}.profile: {profile!r} cannot be applied: the installed "
                             "libtpms has no profiles (they came with libtpms 0.10)")
    return TpmConfig(name=name, version=version,
                     pcr_banks=tuple(sorted(banks, key=list(HASH_ALGS).index)),
                     ek_certificate=ek, profile=profile)
