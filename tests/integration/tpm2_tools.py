"""The issue's tpm2-tools acceptance sequence, against any TCTI (swtpm, mssim, device).

Reusable: every front end of apfs (``dev/tpm0``, ``dev/tpmrm0``, the swtpm and mssim
protocols) and real swtpm run the same sequence, so a failure on one and a pass on the other
points at apfs.  Each step is an unmodified tpm2-tools 5.4 command line, as a user types it,
followed by a check of what it did (not only its exit status)::

    from tpm2_tools import run_acceptance, assert_sysfs_pcrs_match

    timings = run_acceptance("swtpm:host=127.0.0.1,port=2321", tmp_path)
    assert_sysfs_pcrs_match(mount.root / "sys/class/tpm/tpm0", "device:/mnt/dev/tpm0")

The TPM must be fresh (powered, started or not): the sequence ends with ``tpm2_clear``.
Nothing here imports pytest; failures raise :class:`AssertionError` naming the tool, its
command line and its stderr.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

TOOL_TIMEOUT = 120.0
"""Seconds one tool may take (an RSA primary takes about a second on a loaded machine)."""

NV_INDEX = "0x1500016"
PCR = 16
"""The PCR the sequence extends and resets: the debug PCR, resettable from locality 0."""

ALLOCATED_BANKS_OF_INTEREST = ("sha1", "sha256")
"""Banks whose PCR 16 the sequence checks; both are allocated in swtpm's and apfs's default."""

ZERO = {"sha1": bytes(20), "sha256": bytes(32), "sha384": bytes(48), "sha512": bytes(64)}

STORAGE_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt"
SIGNING_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"
NV_ATTRIBUTES = "ownerread|ownerwrite|authread|authwrite"

# tpm2-tools' YAML-like output, parsed only as far as the checks need.
_PCR_BANK = re.compile(r"^  (\w+):$")
_PCR_VALUE = re.compile(r"^    (\d+)\s*: 0x([0-9A-F]+)$")
_TOP_KEY = re.compile(r"^([A-Za-z0-9_]+):")
_HANDLE = re.compile(r"^- (0x[0-9a-fA-F]+)$")


class ToolFailed(AssertionError):
    """A tool exited non-zero when it should have succeeded (or the reverse)."""


@dataclass
class Tpm2Tools:
    """tpm2-tools bound to one TCTI and one working directory (their files go there)."""

    tcti: str
    workdir: Path
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each tool, summed per tool name: where the sequence's time goes."""

    def run(self, tool: str, *args: str, stdin: bytes | None = None,
            fail: bool = False, tcti: bool = True) -> str:
        """``tool ARGS`` (with ``-T TCTI`` unless ``tcti`` is false: offline tools), its
        stdout as text; it must exit 0 (non-zero when ``fail``)."""
        argv = [tool, *(("-T", self.tcti) if tcti else ()), *args]
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=self.workdir, input=stdin, capture_output=True,
                              timeout=TOOL_TIMEOUT, check=False)
        self.seconds[tool] = self.seconds.get(tool, 0.0) + time.perf_counter() - start
        if (done.returncode != 0) != fail:
            raise ToolFailed(f"{' '.join(argv)}: exit status {done.returncode}, expected "
                             f"{'non-zero' if fail else '0'}; stderr:\n"
                             f"{done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def path(self, name: str) -> Path:
        return self.workdir / name

    # -- parsed queries ----------------------------------------------------------------

    def pcrread(self, selection: str = "sha1:all+sha256:all") -> dict[str, dict[int, bytes]]:
        """``tpm2_pcrread SELECTION`` as ``{bank: {pcr: digest}}``."""
        return parse_pcrread(self.run("tpm2_pcrread", selection))

    def getcap_keys(self, capability: str) -> list[str]:
        """The top-level names ``tpm2_getcap CAPABILITY`` prints (algorithms, commands,
        properties, curves), in its order."""
        out = self.run("tpm2_getcap", capability)
        return [m.group(1) for line in out.splitlines() if (m := _TOP_KEY.match(line))]

    def transient_handles(self) -> list[int]:
        out = self.run("tpm2_getcap", "handles-transient")
        return [int(m.group(1), 16) for line in out.splitlines()
                if (m := _HANDLE.match(line.strip()))]


def parse_pcrread(out: str) -> dict[str, dict[int, bytes]]:
    """tpm2_pcrread's output (``  sha256:`` then ``    16: 0x…`` lines) as data."""
    banks: dict[str, dict[int, bytes]] = {}
    bank: dict[int, bytes] | None = None
    for line in out.splitlines():
        if m := _PCR_BANK.match(line):
            bank = banks.setdefault(m.group(1), {})
        elif (m := _PCR_VALUE.match(line)) and bank is not None:
            bank[int(m.group(1))] = bytes.fromhex(m.group(2))
    if not banks:
        raise AssertionError(f"tpm2_pcrread printed no PCR values:\n{out}")
    return banks


def _yaml_value(out: str, key: str) -> str:
    """The value of the first ``KEY: VALUE`` line (any indentation) of a tool's output."""
    m = re.search(rf"^\s*{re.escape(key)}:\s*(.+)$", out, re.MULTILINE)
    if m is None:
        raise AssertionError(f"no {key!r} in the tool's output:\n{out}")
    return m.group(1).strip()


def _fixed_property(out: str, name: str) -> int:
    """The ``raw`` value of property ``name`` in ``tpm2_getcap properties-fixed``."""
    m = re.search(rf"^{re.escape(name)}:\n  raw: (0x[0-9A-Fa-f]+|\d+)$", out, re.MULTILINE)
    if m is None:
        raise AssertionError(f"properties-fixed has no {name}:\n{out}")
    return int(m.group(1), 0)


def object_name(tpm2b_public: bytes) -> bytes:
    """The TPM name of an object with a SHA-256 name algorithm: 0x000B || SHA-256 of its
    TPMT_PUBLIC (the TPM2B_PUBLIC ``tpm2_create -u`` writes, minus its size field)."""
    return b"\x00\x0b" + hashlib.sha256(tpm2b_public[2:]).digest()


# -- the sequence ------------------------------------------------------------------------


def run_acceptance(tcti: str, workdir: Path, *, resource_manager: bool = False) -> Tpm2Tools:
    """Run the issue's whole tpm2-tools sequence through ``tcti``, checking each result.

    ``resource_manager``: the TCTI reaches the TPM through a resource manager (``tpmrm0``),
    which flushes a client's objects when it closes, so no transient object outlives a tool.
    Returns the :class:`Tpm2Tools` used, whose ``seconds`` holds each tool's wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    tools = Tpm2Tools(tcti, workdir)
    tools.run("tpm2_startup", "-c")  # a started TPM answers TPM_RC_INITIALIZE: success too
    tools.run("tpm2_selftest")
    _check_random(tools)
    _check_pcrs(tools)
    _check_getcap(tools)
    _check_hash(tools)
    _check_keys_and_quote(tools, resource_manager)
    _check_nv(tools)
    _check_clear_and_stir(tools)
    return tools


def _check_random(tools: Tpm2Tools) -> None:
    first = tools.run("tpm2_getrandom", "--hex", "32")
    second = tools.run("tpm2_getrandom", "--hex", "32")
    assert re.fullmatch("[0-9a-f]{64}", first), first
    assert first != second, "two tpm2_getrandom 32 returned the same bytes"


def _check_pcrs(tools: Tpm2Tools) -> None:
    """Extend, event and reset PCR 16, computing every expected value with hashlib."""
    before = tools.pcrread()
    for bank in ALLOCATED_BANKS_OF_INTEREST:
        values = before[bank]
        assert sorted(values) == list(range(24)), f"{bank}: PCRs {sorted(values)}"
        assert all(values[i] == b"\xff" * len(ZERO[bank]) for i in range(17, 23)), (
            f"{bank}: PCRs 17-22 are not all ones after Startup(CLEAR)")
    digests = {bank: hashlib.new(bank, f"extend {bank}".encode()).digest()
               for bank in ALLOCATED_BANKS_OF_INTEREST}
    tools.run("tpm2_pcrextend", f"{PCR}:" + ",".join(f"{bank}={digest.hex()}"
                                                      for bank, digest in digests.items()))
    extended = {bank: hashlib.new(bank, before[bank][PCR] + digests[bank]).digest()
                for bank in ALLOCATED_BANKS_OF_INTEREST}
    after = tools.pcrread()
    for bank in ALLOCATED_BANKS_OF_INTEREST:
        assert after[bank][PCR] == extended[bank], f"{bank} PCR {PCR} after tpm2_pcrextend"
        others = {i: v for i, v in after[bank].items() if i != PCR}
        assert others == {i: v for i, v in before[bank].items() if i != PCR}, (
            f"tpm2_pcrextend {PCR} changed another {bank} PCR")

    event = b"measured by tpm2_pcrevent\n" * 3
    tools.path("event.bin").write_bytes(event)
    printed = tools.run("tpm2_pcrevent", str(PCR), "event.bin")
    for bank in ALLOCATED_BANKS_OF_INTEREST:
        digest = hashlib.new(bank, event).digest()
        assert _yaml_value(printed, bank) == digest.hex(), f"tpm2_pcrevent's {bank} digest"
        extended[bank] = hashlib.new(bank, extended[bank] + digest).digest()
    after = tools.pcrread()
    for bank in ALLOCATED_BANKS_OF_INTEREST:
        assert after[bank][PCR] == extended[bank], f"{bank} PCR {PCR} after tpm2_pcrevent"

    tools.run("tpm2_pcrreset", str(PCR))
    after = tools.pcrread()
    for bank in ALLOCATED_BANKS_OF_INTEREST:
        assert after[bank][PCR] == ZERO[bank], f"{bank} PCR {PCR} after tpm2_pcrreset"
    tools.run("tpm2_pcrreset", "17", fail=True)  # PCR 17 is locality 4's (TPM_RC_LOCALITY)


def _check_getcap(tools: Tpm2Tools) -> None:
    algorithms = tools.getcap_keys("algorithms")
    for alg in ("rsa", "ecc", "sha1", "sha256", "aes", "hmac", "ecdsa", "rsassa", "cfb"):
        assert alg in algorithms, f"tpm2_getcap algorithms lacks {alg}: {algorithms}"
    fixed = tools.run("tpm2_getcap", "properties-fixed")
    assert _yaml_value(fixed.split("TPM2_PT_FAMILY_INDICATOR:", 1)[1], "value") == '"2.0"'
    assert _fixed_property(fixed, "TPM2_PT_PCR_COUNT") == 24
    assert _fixed_property(fixed, "TPM2_PT_MAX_DIGEST") >= 32
    assert _fixed_property(fixed, "TPM2_PT_NV_INDEX_MAX") >= 32
    commands = tools.getcap_keys("commands")
    assert len(commands) == _fixed_property(fixed, "TPM2_PT_TOTAL_COMMANDS"), (
        "tpm2_getcap commands lists a different count than TPM2_PT_TOTAL_COMMANDS (paging)")
    for name in ("Startup", "CreatePrimary", "Quote", "NV_DefineSpace", "PCR_Extend",
                 "StartAuthSession", "ContextSave", "FlushContext", "Clear"):
        assert f"TPM2_CC_{name}" in commands, f"tpm2_getcap commands lacks {name}"
    pcrs = tools.run("tpm2_getcap", "pcrs")
    for bank in ALLOCATED_BANKS_OF_INTEREST:
        assert f"- {bank}: [ {', '.join(map(str, range(24)))} ]" in pcrs, pcrs
    variable = tools.run("tpm2_getcap", "properties-variable")
    assert _yaml_value(variable, "orderly") in ("0", "1"), variable
    for key in ("TPM2_PT_PERMANENT", "TPM2_PT_STARTUP_CLEAR", "TPM2_PT_HR_LOADED_AVAIL"):
        assert f"{key}:" in variable, f"properties-variable lacks {key}"
    assert _yaml_value(variable, "shEnable") == "1"
    curves = tools.getcap_keys("ecc-curves")
    assert "TPM2_ECC_NIST_P256" in curves and "TPM2_ECC_NIST_P384" in curves, curves
    tools.transient_handles()  # parses; its contents are checked around the keys below


def _check_hash(tools: Tpm2Tools) -> None:
    data = bytes(range(256)) * 9  # above one TPM buffer: tpm2_hash uses a sequence
    tools.path("hash.in").write_bytes(data)
    for alg in ("sha1", "sha256"):
        tools.run("tpm2_hash", "-g", alg, "-C", "o", "-o", f"hash.{alg}",
                  "-t", f"ticket.{alg}", "hash.in")
        assert tools.path(f"hash.{alg}").read_bytes() == hashlib.new(alg, data).digest(), alg
        assert tools.path(f"ticket.{alg}").stat().st_size > 0, f"no {alg} hashcheck ticket"
    short = tools.run("tpm2_hash", "-g", "sha256", "--hex", stdin=b"abc")
    assert short.strip() == hashlib.sha256(b"abc").hexdigest(), short


def _flush_transients(tools: Tpm2Tools, resource_manager: bool, after: str) -> None:
    """Without a resource manager the tools leave their objects loaded (the TPM holds 3):
    check that ``after`` left one, flush them with ``tpm2_flushcontext -t``, check none
    remains."""
    if not resource_manager:
        assert tools.transient_handles(), f"no transient object loaded after {after}"
    tools.run("tpm2_flushcontext", "-t")
    assert tools.transient_handles() == [], f"tpm2_flushcontext -t after {after}"


def _check_keys_and_quote(tools: Tpm2Tools, resource_manager: bool) -> None:
    for alg in ("rsa", "ecc"):
        out = tools.run("tpm2_createprimary", "-C", "o", "-G", alg, "-c", f"primary.{alg}")
        assert _yaml_value(out, "attributes").split()[-1] == STORAGE_ATTRIBUTES, out
        _flush_transients(tools, resource_manager, f"tpm2_createprimary -G {alg}")
        public = tools.run("tpm2_readpublic", "-c", f"primary.{alg}", "-n", f"primary.{alg}"
                           ".name")
        expected_type = "rsa" if alg == "rsa" else "ecc"
        assert re.search(rf"^type:\n  value: {expected_type}$", public, re.MULTILINE), public
        name = bytes.fromhex(_yaml_value(public, "name"))
        assert tools.path(f"primary.{alg}.name").read_bytes() == name
        _flush_transients(tools, resource_manager, f"tpm2_readpublic of the {alg} primary")

    tools.run("tpm2_create", "-C", "primary.ecc", "-G", "ecc", "-a", SIGNING_ATTRIBUTES,
              "-u", "key.pub", "-r", "key.priv")
    _flush_transients(tools, resource_manager, "tpm2_create")
    tools.run("tpm2_load", "-C", "primary.ecc", "-u", "key.pub", "-r", "key.priv",
              "-c", "key.ctx")
    _flush_transients(tools, resource_manager, "tpm2_load")
    public = tools.run("tpm2_readpublic", "-c", "key.ctx", "-o", "key.pem", "-f", "pem")
    assert bytes.fromhex(_yaml_value(public, "name")) == object_name(
        tools.path("key.pub").read_bytes()), "the loaded key's name is not its public's"
    _flush_transients(tools, resource_manager, "tpm2_readpublic of the signing key")

    nonce = "6170667320717565"
    tools.run("tpm2_quote", "-c", "key.ctx", "-l", f"sha256:0,1,{PCR}", "-q", nonce,
              "-m", "quote.msg", "-s", "quote.sig", "-o", "quote.pcrs", "-g", "sha256")
    _flush_transients(tools, resource_manager, "tpm2_quote")
    verify = ("-u", "key.pem", "-m", "quote.msg", "-s", "quote.sig", "-f", "quote.pcrs",
              "-g", "sha256")
    tools.run("tpm2_checkquote", *verify, "-q", nonce, tcti=False)
    tools.run("tpm2_checkquote", *verify, "-q", nonce[:-1] + "6", tcti=False, fail=True)


def _check_nv(tools: Tpm2Tools) -> None:
    data = hashlib.sha256(b"apfs NV contents").digest()
    tools.path("nv.in").write_bytes(data)
    tools.run("tpm2_nvdefine", NV_INDEX, "-C", "o", "-s", str(len(data)), "-a", NV_ATTRIBUTES)
    assert int(NV_INDEX, 16) in _handles(tools.run("tpm2_getcap", "handles-nv-index"))
    tools.run("tpm2_nvread", NV_INDEX, "-C", "o", "-s", "8", fail=True)  # NV_UNINITIALIZED
    tools.run("tpm2_nvwrite", NV_INDEX, "-C", "o", "-i", "nv.in")
    tools.run("tpm2_nvread", NV_INDEX, "-C", "o", "-s", str(len(data)), "-o", "nv.out")
    assert tools.path("nv.out").read_bytes() == data, "NV contents read back differ"
    tools.run("tpm2_nvread", NV_INDEX, "-C", "o", "-s", "8", "--offset", "4", "-o", "nv.part")
    assert tools.path("nv.part").read_bytes() == data[4:12], "NV bytes 4..11 read back differ"
    public = tools.run("tpm2_nvreadpublic", NV_INDEX)
    attributes = re.search(r"attributes:\n    friendly: (\S+)", public)
    assert attributes is not None, public
    assert set(attributes.group(1).split("|")) == {*NV_ATTRIBUTES.split("|"), "written"}, public
    assert _yaml_value(public, "size") == str(len(data)), public
    tools.run("tpm2_nvundefine", NV_INDEX, "-C", "o")
    tools.run("tpm2_nvread", NV_INDEX, "-C", "o", "-s", "8", fail=True)
    assert int(NV_INDEX, 16) not in _handles(tools.run("tpm2_getcap", "handles-nv-index"))


def _handles(out: str) -> list[int]:
    return [int(m.group(1), 16) for line in out.splitlines() if (m := _HANDLE.match(line))]


def _check_clear_and_stir(tools: Tpm2Tools) -> None:
    """tpm2_clear replaces the owner seed: a context saved under the owner no longer loads."""
    tools.run("tpm2_clear")
    tools.run("tpm2_readpublic", "-c", "primary.ecc", fail=True)
    tools.run("tpm2_stirrandom", stdin=b"entropy from the apfs acceptance sequence\n")
    assert len(bytes.fromhex(tools.run("tpm2_getrandom", "--hex", "16"))) == 16


# -- sysfs against tpm2_pcrread ----------------------------------------------------------


def assert_sysfs_pcrs_match(tpm_dir: Path, tcti: str, banks: tuple[str, ...] = ("sha1",
                                                                                 "sha256")) -> None:
    """Every ``pcr-<bank>/N`` file under ``tpm_dir`` (``MOUNT/sys/class/tpm/tpm0``) equals
    what ``tpm2_pcrread`` reads through ``tcti`` for the same PCR."""
    read = parse_pcrread(subprocess.run(
        ["tpm2_pcrread", "-T", tcti, "+".join(f"{bank}:all" for bank in banks)],
        capture_output=True, text=True, check=True, timeout=TOOL_TIMEOUT).stdout)
    for bank in banks:
        files = {int(p.name): p.read_text() for p in (tpm_dir / f"pcr-{bank}").iterdir()}
        assert sorted(files) == list(range(24)), f"pcr-{bank}: {sorted(files)}"
        for index, text in files.items():
            assert text == read[bank][index].hex().upper() + "\n", (
                f"pcr-{bank}/{index} is {text!r}, tpm2_pcrread says "
                f"{read[bank][index].hex().upper()}")
