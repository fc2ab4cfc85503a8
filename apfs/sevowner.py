"""``apfs sev``: the guest owner's side of an attested SEV launch, as files and commands.

Owns: reading and writing the files sevctl uses (``vm_godh.b64``, ``vm_session.b64``,
``vm_tek.bin``, ``vm_tik.bin``, base64 measurements, secret header and payload) and turning
them into calls of :mod:`vdev.sev.owner`.  Must not know: the firmware (it sees only what a
platform exports), the mount.  ``apfs.cli`` only dispatches here.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import sys
import uuid
from pathlib import Path

from vdev.sev import Policy, SevError, owner
from vdev.sev import keys as sevkeys
from vdev.sev.cert import CERT_LEN, Certificate
from vdev.sev.crypto import KEY_LEN
from vdev.sev.launch_config import LaunchConfig
from vdev.sev.platform import API_VERSION
from vdev.sev.session import MEASURE_LEN, MNONCE_LEN

OK, FAILED, BAD_INPUT = 0, 1, 2
"""Exit statuses: success; verification failed; bad usage or input (argparse's too)."""
DIGEST_LEN = 32  # SHA-256
MEASUREMENT_LEN = MEASURE_LEN + MNONCE_LEN

DESCRIPTION = """\
The guest owner's toolkit (what sevctl does on the owner's machine): verify a platform's
certificate chain, build a launch session, compute and verify the launch measurement, and
package a secret.  Files and formats are sevctl's, so scripts written for real hardware run
unchanged; each subcommand's --help says which sevctl command it stands for.
"""

EPILOG = """\
Exit status: 0 success (chain valid, measurement matches); 1 verification failed (a broken
chain link, a measurement that does not match); 2 bad usage or input (a file that cannot be
read, a blob of the wrong length, a malformed value), with one line on stderr naming the
file or option, the value and the rule.

Blobs given as PATH-OR-BASE64 are read from the file if one exists there (raw bytes of the
expected length, or base64 text of them), else decoded as base64 (as sevctl does).
"""

CHAIN_EPILOG = f"""\
CHAIN is one of (raw or base64):
  4 certificates  PDH | PEK | OCA | CEK            (sevctl export)
  6 certificates  PDH | PEK | OCA | CEK | ASK | ARK (sevctl export --full, apfs's 0x824 ASK/ARK)
  3 certificates  PEK | OCA | CEK with --pdh FILE   (PDH_CERT_EXPORT, QEMU query-sev-capabilities)
each {CERT_LEN:#x} bytes.  The ASK and ARK of an apfs chain are apfs's EMULATED AMD keys
(P-384, derived from a published constant, so every apfs instance has the same): they stand
in for AMD's RSA ARK/ASK, and nothing apfs signs verifies against AMD's real ones.
"""

SESSION_EPILOG = """\
PDH is the PDH certificate (raw or base64) or a sevctl export chain (PDH first).  sevctl
does not check the chain; --chain CHAIN verifies it first (a 3-certificate CHAIN goes with
PDH, a longer one must start with it).

--seed-config FILE writes the seed's [sev-launch] file (QEMU's 2016 draft: dh_pub_qx,
dh_pub_qy, nonce) instead of N_session.b64.  The draft wraps no keys: N_tek.bin and
N_tik.bin are then the KEK and KIK both sides derive from the DH secret and the nonce.

"""


class OwnerError(Exception):
    """Bad input: printed as ``apfs sev CMD: MESSAGE``, exit status 2."""


# -- reading the owner's files ----------------------------------------------------------------


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OwnerError(f"{option} {path}: {exc.strerror}") from None


def _b64decode(text: bytes | str, where: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise OwnerError(f"{where}: not base64") from None


def blob(value: str, option: str, sizes: tuple[int, ...]) -> bytes:
    """PATH-OR-BASE64 of one of ``sizes`` bytes: a file's raw bytes or base64 text, or the
    value itself as base64."""
    if os.path.exists(value):
        data = _read(value, option)
        if len(data) in sizes:
            return data
        where = f"{option} {value}"
        decoded = _b64decode(data, f"{where}: {len(data)} bytes, not {_sizes(sizes)}, and")
    else:
        where = f"{option} {value!r}"
        decoded = _b64decode(value, f"{where}: no such file, and")
    if len(decoded) not in sizes:
        raise OwnerError(f"{where}: {len(decoded)} bytes, need {_sizes(sizes)}")
    return decoded


def _sizes(sizes: tuple[int, ...]) -> str:
    return " or ".join(str(size) for size in sizes) + " bytes"


def u32(text: str) -> int:
    """sevctl's "int or hex" (``0x`` prefix for hex) u32."""
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int or 0x hex") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text} is not a u32")
    return value


def u8(text: str) -> int:
    value = u32(text)
    if value > 0xFF:
        raise argparse.ArgumentTypeError(f"{text} does not fit a byte (SEV API fields are u8)")
    return value


def _write(path: str, data: bytes, what: str) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise OwnerError(f"{what} {path}: {exc.strerror}") from None


# -- chain ------------------------------------------------------------------------------------


def _certs(data: bytes) -> list[bytes]:
    return [data[i : i + CERT_LEN] for i in range(0, len(data), CERT_LEN)]


def load_chain(path: str, pdh_path: str | None) -> tuple[bytes, bytes, bytes | None, bytes | None]:
    """(PDH, PEK||OCA||CEK, ASK, ARK) from a chain file in any form CHAIN_EPILOG lists."""
    certs = _certs(blob(path, "CHAIN", (3 * CERT_LEN, 4 * CERT_LEN, 6 * CERT_LEN)))
    if len(certs) == 3:
        if pdh_path is None:
            raise OwnerError(f"CHAIN {path}: PEK | OCA | CEK only; give the PDH with --pdh FILE")
        return pdh_certificate(pdh_path), b"".join(certs), None, None
    if pdh_path is not None and pdh_certificate(pdh_path) != certs[0]:
        raise OwnerError(f"PDH {pdh_path}: not the PDH that CHAIN {path} starts with")
    ask, ark = (certs[4], certs[5]) if len(certs) == 6 else (None, None)
    return certs[0], b"".join(certs[1:4]), ask, ark


def pdh_certificate(path: str) -> bytes:
    """A PDH file: the certificate, or a sevctl export chain (the PDH comes first)."""
    data = blob(path, "PDH", (CERT_LEN, 4 * CERT_LEN, 6 * CERT_LEN))
    return data[:CERT_LEN]


def verify_chain_file(path: str, pdh_path: str | None = None) -> tuple[bytes, list[str]]:
    """Verify a chain file; returns the PDH and lines describing what anchored it.  A broken
    link raises SevError naming it."""
    pdh, chain, ask_bytes, ark_bytes = load_chain(path, pdh_path)
    ask = Certificate.from_bytes(ask_bytes, "ASK") if ask_bytes else None
    ark = Certificate.from_bytes(ark_bytes, "ARK") if ark_bytes else None
    owner.verify_chain(pdh, chain, ask, ark)
    emulated = (ask is None or ask == sevkeys.emulated_ask().cert) and (
        ark is None or ark == sevkeys.emulated_ark().cert
    )
    anchor = (
        "apfs's emulated AMD ASK/ARK (P-384, from a published constant: not AMD's keys; "
        "a real AMD ARK does not sign this chain)"
        if emulated
        else f"the ASK/ARK in {path} (not apfs's emulated ones)"
    )
    return pdh, [
        "PDH  signed by PEK",
        "PEK  signed by OCA and CEK",
        "OCA  self-signed",
        "CEK  signed by ASK",
        "ASK  signed by ARK",
        "ARK  self-signed",
        f"chain: valid, anchored at {anchor}",
    ]


def cmd_chain(args: argparse.Namespace) -> int:
    try:
        _, lines = verify_chain_file(args.chain, args.pdh)
    except SevError as exc:
        print(f"chain: INVALID: {exc}")
        return FAILED
    print("\n".join(lines))
    return OK


# -- session ----------------------------------------------------------------------------------


def session_files(name: str) -> dict[str, str]:
    """sevctl's file names for ``--name`` (prefix ``vm`` by default)."""
    return {kind: f"{name}_{kind}" for kind in ("tik.bin", "tek.bin", "godh.b64", "session.b64")}


def cmd_session(args: argparse.Namespace) -> int:
    if args.chain is not None:
        try:
            pdh, _ = verify_chain_file(args.chain, args.pdh)
        except SevError as exc:
            print(f"apfs sev session: --chain {args.chain}: {exc}; no "
                  f"session built", file=sys.stderr)
            return FAILED
    else:
        pdh = pdh_certificate(args.pdh)
    files = session_files(args.name)
    b64 = base64.b64encode
    if args.seed_config is not None:
        draft = owner.build_draft_launch(pdh, args.policy)
        config = LaunchConfig.for_owner(args.policy, draft.godh_cert, draft.nonce)
        _write(args.seed_config, config.to_text().encode(), "--seed-config")
        godh, tek, tik = draft.godh_cert, draft.tek, draft.tik
    else:
        session = owner.build_session(pdh, args.policy)
        _write(files["session.b64"], b64(session.session), "session file")
        godh, tek, tik = session.godh_cert, session.tek, session.tik
    _write(files["godh.b64"], b64(godh), "GODH file")
    _write(files["tek.bin"], tek, "TEK file")
    _write(files["tik.bin"], tik, "TIK file")
    return OK


# -- measure and verify -------------------------------------------------------------------------


def launch_digest(args: argparse.Namespace) -> bytes:
    """LD from --launch-digest, or from --firmware [--kernel [--initrd] [--cmdline]]."""
    if args.launch_digest is not None:
        if args.firmware is not None:
            raise OwnerError("--launch-digest and --firmware: give one of them")
        return blob(args.launch_digest, "--launch-digest", (DIGEST_LEN,))
    if args.firmware is None:
        raise OwnerError("one of --firmware or --launch-digest is required")
    if args.kernel is None and (args.initrd is not None or args.cmdline is not None):
        raise OwnerError("--initrd and --cmdline are measured only with --kernel")
    firmware = _read(args.firmware, "--firmware")
    kernel = None if args.kernel is None else _read(args.kernel, "--kernel")
    initrd = None if args.initrd is None else _read(args.initrd, "--initrd")
    try:
        return owner.launch_digest(firmware, kernel, initrd, args.cmdline, vmsas(args))
    except ValueError as exc:
        raise OwnerError(f"--firmware {args.firmware}: {exc}") from None


def vmsas(args: argparse.Namespace) -> list[bytes]:
    """SEV-ES's measured VMSAs, as sevctl takes them: the boot CPU's, then --num-cpus - 1
    copies of the others'.  Required with policy ES, refused without it."""
    given = (args.num_cpus, args.vmsa_cpu0, args.vmsa_cpu1)
    if not args.policy & Policy.ES:
        if any(value is not None for value in given):
            raise OwnerError(f"--num-cpus/--vmsa-cpu0/--vmsa-cpu1: policy {args.policy:#x} "
                             f"has no ES bit ({Policy.ES:#x}): SEV measures no vCPU state")
        return []
    if any(value is None for value in given):
        raise OwnerError(f"policy {args.policy:#x} has the ES bit: --num-cpus, --vmsa-cpu0 and "
                         "--vmsa-cpu1 are required (SEV-ES measures every vCPU's VMSA)")
    if args.num_cpus < 1:
        raise OwnerError(f"--num-cpus {args.num_cpus}: a guest has at least one vCPU")
    cpu0, cpu1 = _read(args.vmsa_cpu0, "--vmsa-cpu0"), _read(args.vmsa_cpu1, "--vmsa-cpu1")
    return [cpu0] + [cpu1] * (args.num_cpus - 1)


def _firmware_version(args: argparse.Namespace) -> tuple[tuple[int, int], int]:
    return (args.api_major, args.api_minor), args.build_id


def cmd_measure(args: argparse.Namespace) -> int:
    if (args.nonce is None) == (args.launch_measure_blob is None):
        raise OwnerError("give one of --nonce or --launch-measure-blob")
    if args.nonce is not None:
        mnonce = blob(args.nonce, "--nonce", (MNONCE_LEN,))
    else:
        mnonce = blob(args.launch_measure_blob, "--launch-measure-blob",
                      (MEASUREMENT_LEN,))[MEASURE_LEN:]
    tik = blob(args.tik, "--tik", (KEY_LEN,))
    api, build = _firmware_version(args)
    measure = owner.expected_measurement(tik, launch_digest(args), mnonce, args.policy, api,
                                         build)
    if args.outfile is not None:
        _write(args.outfile, measure + mnonce, "--outfile")
        print(f"Wrote outfile: {args.outfile}")
    else:
        print(base64.b64encode(measure + mnonce).decode())
    return OK


def cmd_verify(args: argparse.Namespace) -> int:
    measurement = blob(args.measurement, "--measurement", (MEASUREMENT_LEN,))
    tik = blob(args.tik, "--tik", (KEY_LEN,))
    digest = launch_digest(args)
    api, build = _firmware_version(args)
    if owner.verify_measurement(measurement, tik, digest, args.policy, api, build):
        print(f"measurement: valid (launch digest {digest.hex()}, policy {args.policy:#x})")
        return OK
    print(f"measurement: DOES NOT MATCH launch digest {digest.hex()}, policy {args.policy:#x}, "
          f"API {api[0]}.{api[1]} build {build} under this TIK (another image, kernel "
          f"command line, policy or launch)")
    return FAILED


# -- secret -----------------------------------------------------------------------------------


def secret_entries(specs: list[str]) -> dict[uuid.UUID, bytes]:
    """``--secret UUID:FILE`` options as the secret table's entries."""
    entries: dict[uuid.UUID, bytes] = {}
    for spec in specs:
        guid_text, sep, path = spec.partition(":")
        if not sep:
            raise OwnerError(f"--secret {spec}: not UUID:FILE")
        try:
            guid = uuid.UUID(guid_text)
        except ValueError:
            raise OwnerError(f"--secret {spec}: {guid_text!r} is not a UUID") from None
        if guid in entries:
            raise OwnerError(f"--secret {spec}: GUID {guid} given twice")
        entries[guid] = _read(path, f"--secret {guid}:")
    if not entries:
        raise OwnerError("--secret UUID:FILE: at least one is required")
    return entries


def cmd_secret(args: argparse.Namespace) -> int:
    tek = blob(args.tek, "--tek", (KEY_LEN,))
    tik = blob(args.tik, "--tik", (KEY_LEN,))
    measurement = blob(args.launch_measure_blob, "--launch-measure-blob", (MEASUREMENT_LEN,))
    iv = None if args.iv is None else blob(args.iv, "--iv", (KEY_LEN,))
    table = owner.secret_table(secret_entries(args.secret))
    packaged = owner.package_secret(table, tek, tik, measurement,
                                    (args.api_major, args.api_minor), iv)
    encode = base64.b64encode if args.base64 else bytes
    _write(args.header_file, encode(packaged.header), "header file")
    print(f"Wrote header to: {args.header_file}")
    _write(args.payload_file, encode(packaged.trans), "payload file")
    print(f"Wrote payload to: {args.payload_file}")
    return OK


# -- the parser -------------------------------------------------------------------------------


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-major", type=u8, required=True,
                        help="the firmware's API major (query-sev api-major; int or hex)")
    parser.add_argument("--api-minor", type=u8, required=True,
                        help="the firmware's API minor (query-sev api-minor)")
    parser.add_argument("--build-id", type=u8, required=True,
                        help="the firmware's build (query-sev build-id)")


def _add_launch(parser: argparse.ArgumentParser) -> None:
    _add_version(parser)
    parser.add_argument("--policy", type=u32, required=True,
                        help="the guest policy the launch was started with (int or hex)")
    parser.add_argument("--tik", required=True, metavar="PATH-OR-BASE64",
                        help="the session's TIK (vm_tik.bin)")
    parser.add_argument("--launch-digest", metavar="PATH-OR-BASE64",
                        help="the expected launch digest (32 bytes) instead of files")
    parser.add_argument("--firmware", metavar="FILE", help="the firmware (OVMF) image")
    parser.add_argument("--kernel", metavar="FILE",
                        help="the kernel (measured through the kernel-hashes table, which "
                             "needs a firmware whose footer table has the SEV hash area)")
    parser.add_argument("--initrd", metavar="FILE", help="the initrd (none: sha256 of nothing)")
    parser.add_argument("--cmdline", metavar="TEXT",
                        help="the kernel command line, as -append gives it (none: empty)")
    parser.add_argument("--num-cpus", type=u32, metavar="N",
                        help="SEV-ES (policy bit 2): the number of vCPUs")
    parser.add_argument("--vmsa-cpu0", metavar="FILE", help="SEV-ES: the boot vCPU's VMSA")
    parser.add_argument("--vmsa-cpu1", metavar="FILE",
                        help="SEV-ES: the VMSA of every other vCPU")


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Declare ``apfs sev`` and its subcommands on apfs's subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    sev = commands.add_parser("sev", help="the SEV guest owner's toolkit (sevctl's files)",
                              description=DESCRIPTION, epilog=EPILOG, formatter_class=raw)
    sub = sev.add_subparsers(dest="sev_command", required=True, metavar="SUBCOMMAND")

    chain = sub.add_parser("chain", help="verify a PDH certificate chain (sevctl verify)",
                           description="Verify PDH <- PEK <- (OCA, CEK <- ASK <- ARK) and say "
                                       "what anchors it.  As `sevctl verify --sev CHAIN`.",
                           epilog=CHAIN_EPILOG + "\n" + EPILOG, formatter_class=raw)
    chain.add_argument("--pdh", metavar="FILE", help="the PDH certificate, for a 3-cert CHAIN")
    chain.add_argument("chain", metavar="CHAIN", help="the exported chain (see below)")
    chain.set_defaults(sev_func=cmd_chain)

    session = sub.add_parser(
        "session", help="build a launch session (sevctl session)",
        description="Build a GODH key pair, session blob and TEK/TIK for POLICY against a "
                    "platform's PDH, as `sevctl session [--name N] PDH POLICY`: writes "
                    "N_godh.b64 and N_session.b64 (QEMU's sev-guest dh-cert-file and "
                    "session-file) and N_tek.bin, N_tik.bin (keep them: measure, verify and "
                    "secret need them).",
        epilog=SESSION_EPILOG + EPILOG, formatter_class=raw)
    session.add_argument("--name", default="vm",
                         help="file name prefix (default vm: vm_godh.b64, ...)")
    session.add_argument("--chain", metavar="CHAIN",
                         help="verify the PDH's chain first (as `apfs sev chain`)")
    session.add_argument("--seed-config", metavar="FILE",
                         help="write a seed-format [sev-launch] file instead of a session blob")
    session.add_argument("pdh", metavar="PDH", help="the platform's PDH certificate")
    session.add_argument("policy", metavar="POLICY", type=u32,
                         help="the guest policy, int or 0x hex (bit 0 NODBG, 1 NOKS, 2 ES, ...)")
    session.set_defaults(sev_func=cmd_session)

    measure = sub.add_parser(
        "measure", help="compute the expected measurement (sevctl measurement build)",
        description="Print base64(MEASURE || MNONCE), the 48 bytes LAUNCH_MEASURE must report, "
                    "as `sevctl measurement build`.",
        epilog="Unlike sevctl, --initrd and --cmdline may be left out (QEMU then hashes an\n"
               "empty initrd and command line).\n\n" + EPILOG, formatter_class=raw)
    _add_launch(measure)
    measure.add_argument("--nonce", metavar="PATH-OR-BASE64", help="the 16-byte MNONCE")
    measure.add_argument("--launch-measure-blob", metavar="PATH-OR-BASE64",
                         help="take MNONCE from a LAUNCH_MEASURE reply (query-sev-launch-measure)")
    measure.add_argument("--outfile", metavar="FILE", help="write the 48 raw bytes there")
    measure.set_defaults(sev_func=cmd_measure)

    verify = sub.add_parser(
        "verify", help="verify a launch measurement (virt-qemu-sev-validate)",
        description="Check a LAUNCH_MEASURE reply against the expected launch digest, policy "
                    "and firmware version under the session's TIK: exit 0 if it matches, 1 if "
                    "not.",
        epilog=EPILOG, formatter_class=raw)
    verify.add_argument("--measurement", required=True, metavar="PATH-OR-BASE64",
                        help="what query-sev-launch-measure (the measurement file) gave")
    _add_launch(verify)
    verify.set_defaults(sev_func=cmd_verify)

    secret = sub.add_parser(
        "secret", help="package a launch secret (sevctl secret build)",
        description="Encrypt sevctl's secret table of the --secret entries with the TEK, MAC "
                    "it with the TIK bound to the measurement, and write LAUNCH_SECRET's "
                    "header (FLAGS | IV | MAC, 52 bytes) and payload, as `sevctl secret build`.",
        epilog="QEMU's sev-inject-launch-secret takes packet-header and secret as base64:\n"
               "--base64 writes them so.\n\n" + EPILOG, formatter_class=raw)
    secret.add_argument("--tik", required=True, metavar="PATH-OR-BASE64", help="vm_tik.bin")
    secret.add_argument("--tek", required=True, metavar="PATH-OR-BASE64", help="vm_tek.bin")
    secret.add_argument("--launch-measure-blob", required=True, metavar="PATH-OR-BASE64",
                        help="the verified LAUNCH_MEASURE reply")
    secret.add_argument("--secret", action="append", default=[], metavar="UUID:FILE",
                        help="an entry of the secret table (repeatable)")
    secret.add_argument("--iv", metavar="BASE64", help="a fixed IV (tests; default random)")
    secret.add_argument("--api-major", type=u8, default=API_VERSION[0],
                        help=f"the firmware's API major (default {API_VERSION[0]})")
    secret.add_argument("--api-minor", type=u8, default=API_VERSION[1],
                        help=f"the firmware's API minor (default {API_VERSION[1]}; before "
                             "0.17 the MAC does not cover the measurement)")
    secret.add_argument("--base64", action="store_true",
                        help="write the files as base64 text (default: raw, as sevctl)")
    secret.add_argument("header_file", metavar="HEADER", help="output: the packet header")
    secret.add_argument("payload_file", metavar="PAYLOAD", help="output: the encrypted table")
    secret.set_defaults(sev_func=cmd_secret)
    sev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return args.sev_func(args)
    except (OwnerError, SevError) as exc:
        print(f"apfs sev {args.sev_command}: {exc}", file=sys.stderr)
        return BAD_INPUT
