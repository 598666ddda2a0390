#!/usr/bin/env python3
"""CycloneDX SBOM of the packaged thingplus-gw binary.

The crate list comes from the binary itself: `cargo auditable build` embeds
the resolved dependency tree (names, versions, sources, build-only or not)
in its `.dep-v0` section, the same data `cargo audit bin` and other binary
scanners read. So the SBOM lists exactly what was compiled into the file it
sits beside, for whatever target it was built. Licences come from
`cargo metadata`, the .crate checksums from Cargo.lock.

  sbom.py generate PKG_OR_BINARY          CycloneDX 1.5 JSON on stdout
  sbom.py check SBOM PKG_OR_BINARY [--count N]
                                          the SBOM describes this binary
                                          (its SHA-256 and its crates; N:
                                          the dependency count `cargo audit
                                          bin` reported, root included)
  sbom.py extract PKG DEST                write /usr/bin/thingplus-gw of a
                                          .deb or .rpm to DEST

PKG_OR_BINARY: a .deb, an .rpm (the binary is read from /usr/bin/thingplus-gw
inside) or the binary itself.
"""

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import tomllib
import uuid
import zlib
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN_IN_PACKAGE = "usr/bin/thingplus-gw"
SECTION = ".dep-v0"


def die(msg):
    print(f"sbom.py: {msg}", file=sys.stderr)
    sys.exit(1)


def read_binary(path):
    """The binary's bytes, from a .deb, an .rpm or the file itself."""
    path = str(path)
    if path.endswith(".deb"):
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", path], check=True,
                             capture_output=True).stdout
    elif path.endswith(".rpm"):
        with open(path, "rb") as f:
            tar = subprocess.run(["rpm2archive", "-n"], stdin=f, check=True,
                                 capture_output=True).stdout
    else:
        return Path(path).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        for m in t.getmembers():
            if m.name.lstrip("./") == BIN_IN_PACKAGE:
                return t.extractfile(m).read()
    die(f"{path} holds no /{BIN_IN_PACKAGE}")


def elf_section(data, name):
    """The contents of one ELF section (32 or 64 bit, either byte order)."""
    if data[:4] != b"\x7fELF":
        die("not an ELF file")
    bits, order = data[4], "<" if data[5] == 1 else ">"
    if bits == 2:
        shoff, = struct.unpack_from(order + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)
        fmt = order + "IIQQQQIIQQ"
    else:
        shoff, = struct.unpack_from(order + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x2E)
        fmt = order + "IIIIIIIIII"
    headers = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx]
    names = data[strtab[4]:strtab[4] + strtab[5]]
    for h in headers:
        end = names.index(b"\0", h[0])
        if names[h[0]:end].decode() == name:
            return data[h[4]:h[4] + h[5]]
    return None


def embedded_packages(binary):
    raw = elf_section(binary, SECTION)
    if raw is None:
        die(f"no {SECTION} section: the binary was not built with `cargo auditable build`")
    return json.loads(zlib.decompress(raw))["packages"]


def purl(p):
    return f"pkg:cargo/{p['name']}@{p['version']}"


def crate_facts():
    """Licence by (name, version) from cargo metadata; checksum from Cargo.lock."""
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"],
        cwd=REPO, check=True, capture_output=True).stdout)
    licences = {(p["name"], p["version"]): p.get("license") for p in meta["packages"]}
    lock = tomllib.loads((REPO / "Cargo.lock").read_text())
    sums = {(p["name"], p["version"]): p.get("checksum") for p in lock["package"]}
    return licences, sums


def licence_entry(expr):
    # Old manifests write "MIT/Apache-2.0" for "MIT OR Apache-2.0".
    return [{"expression": expr.replace("/", " OR ")}] if expr else []


def generate(path):
    binary = read_binary(path)
    pkgs = embedded_packages(binary)
    licences, sums = crate_facts()
    root = next(p for p in pkgs if p.get("root"))
    digest = hashlib.sha256(binary).hexdigest()
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    components = []
    for p in pkgs:
        if p is root:
            continue
        c = {
            "type": "library",
            "bom-ref": purl(p),
            "name": p["name"],
            "version": p["version"],
            "purl": purl(p),
            # Build-only crates (build scripts, proc macros' helpers) run
            # at build time and are not in the binary.
            "scope": "excluded" if p.get("kind") == "build" else "required",
        }
        if lic := licence_entry(licences.get((p["name"], p["version"]))):
            c["licenses"] = lic
        if s := sums.get((p["name"], p["version"])):
            c["hashes"] = [{"alg": "SHA-256", "content": s}]
        components.append(c)
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        # One serial number per binary: the same build gives the same SBOM.
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'sha256:' + digest)}",
        "version": 1,
        "metadata": {
            "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "thingplus-gw scripts/sbom.py",
                                      "description": "from the dependency list cargo auditable embeds in the binary"}]},
            "component": {
                "type": "application",
                "bom-ref": purl(root),
                "name": root["name"],
                "version": root["version"],
                "purl": purl(root),
                "licenses": licence_entry(licences.get((root["name"], root["version"]))),
                "hashes": [{"alg": "SHA-256", "content": digest}],
            },
        },
        "components": components,
        "dependencies": [
            {"ref": purl(p), "dependsOn": [purl(pkgs[i]) for i in p.get("dependencies", [])]}
            for p in pkgs
        ],
    }
    json.dump(bom, sys.stdout, indent=1)
    sys.stdout.write("\n")


def check(sbom_path, path, count):
    bom = json.loads(Path(sbom_path).read_text())
    binary = read_binary(path)
    pkgs = embedded_packages(binary)
    digest = hashlib.sha256(binary).hexdigest()
    meta = bom["metadata"]["component"]
    want = [h["content"] for h in meta.get("hashes", []) if h["alg"] == "SHA-256"]
    if want != [digest]:
        die(f"{sbom_path} is for binary sha256 {want}, {path} holds {digest}")
    embedded = {(p["name"], p["version"]) for p in pkgs if not p.get("root")}
    listed = {(c["name"], c["version"]) for c in bom["components"]}
    if embedded != listed:
        die(f"{sbom_path} and the binary differ: only in the binary {sorted(embedded - listed)}, "
            f"only in the SBOM {sorted(listed - embedded)}")
    if count is not None and count != len(pkgs):
        die(f"cargo audit bin counted {count} dependencies, the binary embeds {len(pkgs)}")
    runtime = sorted(f"{c['name']} {c['version']}" for c in bom["components"] if c["scope"] == "required")
    unlicensed = [c["name"] for c in bom["components"] if not c.get("licenses")]
    if unlicensed:
        die(f"{sbom_path}: no licence for {unlicensed}")
    print(f"SBOM {sbom_path}: {meta['name']} {meta['version']} sha256 {digest}, "
          f"{len(listed)} crates ({len(runtime)} in the binary, {len(listed) - len(runtime)} build-only): "
          + ", ".join(runtime))


def main(argv):
    if len(argv) == 2 and argv[0] == "generate":
        generate(argv[1])
    elif len(argv) in (3, 5) and argv[0] == "check":
        count = None
        if len(argv) == 5:
            if argv[3] != "--count":
                die(__doc__)
            count = int(argv[4])
        check(argv[1], argv[2], count)
    elif len(argv) == 3 and argv[0] == "extract":
        Path(argv[2]).write_bytes(read_binary(argv[1]))
        os.chmod(argv[2], 0o755)
    else:
        die(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
