"""The EK certificate apfs issues at manufacture (``ek_certificate = true``).

Owns: :func:`ek_certificate`, an X.509 certificate for an RSA EK's public key, as
``swtpm_setup --create-ek-cert`` makes one.  Must not know the TPM: it gets the modulus.

A real EK certificate is signed by the TPM vendor's CA; this one is signed by a CA that apfs
makes on the spot for this one certificate (its key is thrown away) and whose name says so,
so nobody can mistake it for a vendor's.  Clients that read the certificate from NV index
0x01C00002 and compare its key with the EK's (tpm2_getekcertificate, attestation set-ups
with a trust anchor they configure) work; a verifier that wants a real vendor chain refuses
it, as it should.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

CA_NAME = x509.Name([
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "apfs"),
    x509.NameAttribute(NameOID.COMMON_NAME,
                       "apfs local vTPM EK CA (made by apfs, not a TPM vendor)"),
])
TCG_KP_EK_CERTIFICATE = ObjectIdentifier("2.23.133.8.1")
NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
"""RFC 5280's "no well-defined expiration date", as TCG EK certificates use."""


def ek_certificate(modulus: bytes, exponent: int = 65537) -> bytes:
    """The DER certificate of the RSA EK with ``modulus`` (big-endian bytes)."""
    public = rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apfs vTPM EK")]))
        .issuer_name(CA_NAME)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([TCG_KP_EK_CERTIFICATE]), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
