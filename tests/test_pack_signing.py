"""Keys, detached signatures and the trust policy: every rule, through the API and the CLI."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pack.keys import Keyring, generate_key, key_id, load_private_key, load_public_key, parse_public_key
from pack.signature import (
    DOMAIN,
    Signature,
    add_signature,
    decode_signatures,
    encode_signatures,
    pack_sha256,
    parse_signature_blob,
    read_signatures,
    sign_pack,
    signature_path,
    signed_message,
    write_signatures,
)
from pack.verify import check_trust, verify_pack
from store.errors import PackError, SignatureError, UsageError
from tests.helpers import run_cli
from tests.test_pack_support import build_sample, keyring_dir, make_keys

pytestmark = pytest.mark.usefixtures("needs_root")


@pytest.fixture
def signed(tmp_path):
    """A pack, three keys (a, b signing; c never), keyrings, the pack signed by a."""
    built = build_sample(str(tmp_path))
    keys = make_keys(str(tmp_path), "a", "b", "c")
    sign_pack(built.pack, load_private_key(keys["a"]))
    return built, keys


def test_keygen_writes_private_0600_and_public(tmp_path):
    path = str(tmp_path / "vendor.key")
    kid = generate_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert key_id(load_public_key(path + ".pub")) == kid == key_id(load_private_key(path).public_key())
    with pytest.raises(UsageError):
        generate_key(path)  # never overwrites a key


def test_signed_by_trusted_key_verifies(tmp_path, signed):
    built, keys = signed
    keyring = Keyring.load(keyring_dir(str(tmp_path), "ring", keys["a"]))
    result = verify_pack(built.pack, keyring)
    assert result.signers == (key_id(load_private_key(keys["a"]).public_key()),)
    assert result.sha256 == pack_sha256(built.pack)


def test_unknown_key_refused(tmp_path, signed):
    built, keys = signed
    keyring = Keyring.load(keyring_dir(str(tmp_path), "ring", keys["b"]))
    with pytest.raises(SignatureError, match="not in the keyring"):
        verify_pack(built.pack, keyring)


def test_revoked_key_refused_even_if_present(tmp_path, signed):
    built, keys = signed
    keyring = Keyring.load(keyring_dir(str(tmp_path), "ring", keys["a"], revoked=(keys["a"],)))
    with pytest.raises(SignatureError, match="revoked"):
        verify_pack(built.pack, keyring)


def test_threshold(tmp_path, signed):
    built, keys = signed
    keyring = Keyring.load(keyring_dir(str(tmp_path), "ring", keys["a"], keys["b"], keys["c"]))
    with pytest.raises(SignatureError, match="1 good signature.*2 required"):
        verify_pack(built.pack, keyring, min_signatures=2)
    sign_pack(built.pack, load_private_key(keys["b"]))
    assert len(verify_pack(built.pack, keyring, min_signatures=2).signers) == 2
    # Two signatures by the same key count once: re-signing replaces.
    sign_pack(built.pack, load_private_key(keys["b"]))
    assert len(read_signatures(signature_path(built.pack))) == 2
    with pytest.raises(SignatureError):
        verify_pack(built.pack, keyring, min_signatures=3)
    with pytest.raises(UsageError):
        verify_pack(built.pack, keyring, min_signatures=0)


def test_revoked_signature_does_not_count_towards_threshold(tmp_path, signed):
    built, keys = signed
    sign_pack(built.pack, load_private_key(keys["b"]))
    keyring = Keyring.load(keyring_dir(str(tmp_path), "ring", keys["a"], keys["b"], revoked=(keys["b"],)))
    verify_pack(built.pack, keyring)
    with pytest.raises(SignatureError, match="revoked"):
        verify_pack(built.pack, keyring, min_signatures=2)


def test_signature_of_another_pack_refused(tmp_path, signed):
    built, keys = signed
    other = build_sample(str(tmp_path), version="2")
    shutil.copy(signature_path(built.pack), signature_path(other.pack))
    keyring = Keyring.load(keyring_dir(str(tmp_path), "ring", keys["a"]))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_pack(other.pack, keyring)


def test_modified_pack_refused(tmp_path, signed):
    built, keys = signed
    data = bytearray(open(built.pack, "rb").read())
    data[-1] ^= 1
    open(built.pack, "wb").write(data)
    keyring = Keyring.load(keyring_dir(str(tmp_path), "ring", keys["a"]))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_pack(built.pack, keyring)


@pytest.mark.parametrize("cut", [0, 5, 11, 12 + 50, 12 + 95])
def test_truncated_signature_file_refused(tmp_path, signed, cut):
    built, keys = signed
    path = signature_path(built.pack)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:cut])
    keyring = Keyring.load(keyring_dir(str(tmp_path), "ring", keys["a"]))
    with pytest.raises(SignatureError):
        verify_pack(built.pack, keyring)


def test_signature_file_format_rules():
    a, b = Signature(b"\1" * 32, b"s" * 64), Signature(b"\2" * 32, b"t" * 64)
    data = encode_signatures([b, a])
    assert decode_signatures(data, "x") == [a, b]
    unsorted = data[:12] + data[12 + 96:] + data[12:12 + 96]
    with pytest.raises(SignatureError, match="not sorted"):
        decode_signatures(unsorted, "x")
    with pytest.raises(SignatureError, match="magic"):
        decode_signatures(b"X" + data[1:], "x")
    with pytest.raises(SignatureError, match="version"):
        decode_signatures(data[:8] + b"\2\0" + data[10:], "x")
    with pytest.raises(SignatureError, match="extended"):
        decode_signatures(data + b"\0", "x")


def test_missing_signature_file(tmp_path):
    built = build_sample(str(tmp_path))
    keys = make_keys(str(tmp_path), "a")
    with pytest.raises(SignatureError, match="not signed"):
        verify_pack(built.pack, Keyring.load(keyring_dir(str(tmp_path), "ring", keys["a"])))


def test_missing_pack_is_named_missing_not_unsigned(tmp_path):
    built = build_sample(str(tmp_path))
    ring = keyring_dir(str(tmp_path), "ring", make_keys(str(tmp_path), "a")["a"])
    for args in (["pack", "verify"], ["pack", "import"]):
        done = run_cli(*args, str(tmp_path / "gone.pack"), "--keys", ring, repo=built.repo.path, check=False)
        assert done.returncode == 11, done.stderr  # PackError
        assert "gone.pack: no such pack file" in done.stderr and "Traceback" not in done.stderr


def test_keygen_into_a_missing_directory_names_the_directory(tmp_path):
    done = run_cli("keygen", str(tmp_path / "no-dir" / "k"), check=False)
    assert done.returncode != 0
    assert f"{tmp_path / 'no-dir'}: No such file or directory" in done.stderr
    assert ".tmp" not in done.stderr  # not the atomic writer's temporary name


def test_bad_keyring_files_fail_closed(tmp_path, signed):
    built, keys = signed
    ring = keyring_dir(str(tmp_path), "ring", keys["a"])
    with open(os.path.join(ring, "revoked"), "w") as handle:
        handle.write("not-a-key-id\n")
    with pytest.raises(SignatureError, match="not a key id"):
        Keyring.load(ring)
    os.unlink(os.path.join(ring, "revoked"))
    with open(os.path.join(ring, "junk.pub"), "w") as handle:
        handle.write("junk")
    with pytest.raises(SignatureError, match="junk.pub"):
        Keyring.load(ring)


def _pem(public) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_public_key_parser_agrees_with_cryptography_and_refuses_other_keys():
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, x25519

    for _ in range(20):
        public = ed25519.Ed25519PrivateKey.generate().public_key()
        pem = _pem(public)
        assert key_id(parse_public_key(pem, "k")) == key_id(public)
        assert key_id(parse_public_key(pem.replace(b"\n", b"\r\n"), "k")) == key_id(public)
    # X25519 has the same length, a different OID; the others differ in shape.
    for other in (x25519.X25519PrivateKey.generate(), ed448.Ed448PrivateKey.generate(),
                  ec.generate_private_key(ec.SECP256R1())):
        with pytest.raises(SignatureError, match="not an Ed25519 public key"):
            parse_public_key(_pem(other.public_key()), "k")
    pem = _pem(ed25519.Ed25519PrivateKey.generate().public_key())
    for bad, why in ((pem + pem, "2 PUBLIC KEY blocks"), (b"", "no PUBLIC KEY blocks"),
                     (pem.replace(b"MCowBQYDK2Vw", b"MCowBQYDK2V!"), "PUBLIC KEY blocks"),
                     (pem.replace(b"-----\n", b"-----\n=", 1), "bad base64")):
        with pytest.raises(SignatureError, match=why):
            parse_public_key(bad, "k")


def test_offline_flow_api(tmp_path):
    built = build_sample(str(tmp_path))
    service_key = Ed25519PrivateKey.generate()  # held by a signing service, never on disk here
    pub = tmp_path / "service.pub"
    from pack.keys import public_pem
    pub.write_bytes(public_pem(service_key.public_key()))
    message = signed_message(pack_sha256(built.pack))
    assert message.startswith(DOMAIN)
    signature = service_key.sign(message)
    # A signature over the bare digest (no domain prefix) is refused.
    with pytest.raises(SignatureError):
        add_signature(built.pack, service_key.sign(pack_sha256(built.pack)), load_public_key(str(pub)))
    assert not os.path.exists(signature_path(built.pack))
    add_signature(built.pack, signature, load_public_key(str(pub)))
    ring = tmp_path / "ring"
    ring.mkdir()
    shutil.copy(pub, ring / "service.pub")
    verify_pack(built.pack, Keyring.load(str(ring)))
    assert parse_signature_blob(signature.hex().encode() + b"\n", "s") == signature
    with pytest.raises(SignatureError):
        parse_signature_blob(signature[:63], "s")


def test_check_trust_counts_each_rule_in_its_message(tmp_path):
    keys = make_keys(str(tmp_path), "a", "b", "c")
    ring = Keyring.load(keyring_dir(str(tmp_path), "ring", keys["a"], keys["b"], revoked=(keys["b"],)))
    digest = b"\7" * 32
    a, b, c = (load_private_key(keys[n]) for n in "abc")
    sigs = [Signature(key_id(a.public_key()), a.sign(signed_message(b"\0" * 32))),
            Signature(key_id(b.public_key()), b.sign(signed_message(digest))),
            Signature(key_id(c.public_key()), c.sign(signed_message(digest)))]
    with pytest.raises(SignatureError) as info:
        check_trust(digest, sigs, ring)
    text = str(info.value)
    assert "does not verify" in text and "revoked" in text and "not in the keyring" in text


# -- the CLI, end to end ------------------------------------------------------------------------

def test_cli_online_signing_and_verify_exit_codes(tmp_path):
    built = build_sample(str(tmp_path))
    key = str(tmp_path / "vendor.key")
    run_cli("keygen", key)
    other = str(tmp_path / "other.key")
    run_cli("keygen", other)
    ring = keyring_dir(str(tmp_path), "ring", key)
    pack = str(tmp_path / "cli.pack")
    run_cli("pack", "build", "os/main", "-o", pack, repo=built.repo.path)
    assert open(pack, "rb").read() == open(built.pack, "rb").read()
    assert run_cli("pack", "verify", pack, "--keys", ring, check=False).returncode == 12  # unsigned
    run_cli("pack", "sign", pack, "--key", other)
    assert run_cli("pack", "verify", pack, "--keys", ring, check=False).returncode == 12
    run_cli("pack", "sign", pack, "--key", key)
    proc = run_cli("pack", "verify", pack, "--keys", ring, "--json")
    assert '"ok": true' in proc.stdout
    assert run_cli("pack", "verify", pack, "--keys", ring, "--min-signatures", "2",
                   check=False).returncode == 12
    inspect = run_cli("pack", "inspect", pack, "--json").stdout
    assert inspect.count('"key_id"') == 2
    # A pack modified after signing: the signature no longer holds.
    data = bytearray(open(pack, "rb").read())
    data[100] ^= 0xFF
    open(pack, "wb").write(data)
    proc = run_cli("pack", "verify", pack, "--keys", ring, check=False)
    assert proc.returncode == 12, proc.stderr
    # Re-signed by the vendor yet internally inconsistent: a pack error.
    run_cli("pack", "sign", pack, "--key", key)
    proc = run_cli("pack", "verify", pack, "--keys", ring, check=False)
    assert proc.returncode == 11 and "pack" in proc.stderr
    assert run_cli("pack", "inspect", pack, check=False).returncode == 11


def test_cli_offline_signing_flow(tmp_path):
    built = build_sample(str(tmp_path))
    key = str(tmp_path / "vendor.key")
    run_cli("keygen", key)
    ring = keyring_dir(str(tmp_path), "ring", key)
    message = bytes.fromhex(run_cli("pack", "digest", built.pack).stdout.strip())
    assert message == signed_message(pack_sha256(built.pack))
    msg_file = str(tmp_path / "msg")
    run_cli("pack", "digest", built.pack, "-o", msg_file)
    assert open(msg_file, "rb").read() == message
    sig_file = str(tmp_path / "sig")
    if shutil.which("openssl"):
        # The signing service is a different tool holding the key: openssl.
        subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", msg_file,
                        "-out", sig_file], check=True, capture_output=True)
    else:
        open(sig_file, "wb").write(load_private_key(key).sign(message))
    wrong = str(tmp_path / "wrong.key")
    run_cli("keygen", wrong)
    proc = run_cli("pack", "add-signature", built.pack, "--pubkey", wrong + ".pub", sig_file, check=False)
    assert proc.returncode == 12 and not os.path.exists(signature_path(built.pack))
    run_cli("pack", "add-signature", built.pack, "--pubkey", key + ".pub", sig_file)
    assert run_cli("pack", "verify", built.pack, "--keys", ring).returncode == 0
    # Hex form, as a service might return it, is accepted too.
    hex_file = tmp_path / "sig.hex"
    hex_file.write_text(open(sig_file, "rb").read().hex() + "\n")
    run_cli("pack", "add-signature", built.pack, "--pubkey", key + ".pub", str(hex_file))
    assert len(read_signatures(signature_path(built.pack))) == 1


def test_cli_verify_refuses_a_corrupt_signature_file(tmp_path):
    built = build_sample(str(tmp_path))
    key = str(tmp_path / "vendor.key")
    run_cli("keygen", key)
    run_cli("pack", "sign", built.pack, "--key", key)
    ring = keyring_dir(str(tmp_path), "ring", key)
    path = signature_path(built.pack)
    good = open(path, "rb").read()
    write_signatures(path, [Signature(good[12:44], bytes(64))])
    assert run_cli("pack", "verify", built.pack, "--keys", ring, check=False).returncode == 12
    open(path, "wb").write(good[:-1])
    proc = run_cli("pack", "verify", built.pack, "--keys", ring, check=False)
    assert proc.returncode == 12 and "truncated" in proc.stderr


def test_pack_error_is_not_signature_error():
    assert not issubclass(PackError, SignatureError)
