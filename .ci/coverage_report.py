"""Combine the test run's coverage (this process and every child it started), print it per
package, and fail if a package falls below its floor ([tool.medtransfer.coverage_floors] in
pyproject.toml), so coverage cannot drop unnoticed. Run by the README's test command."""

from __future__ import annotations

import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parents[1]


def package_of(path: str) -> str:
    rel = Path(path).resolve().relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) == 2 else "/".join(rel.parts[:2])


def main() -> int:
    floors = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["medtransfer"]["coverage_floors"]
    cov = coverage.Coverage(config_file=str(ROOT / "pyproject.toml"))
    cov.combine()
    cov.save()
    cov.load()
    totals = defaultdict(lambda: [0, 0])
    for path in cov.get_data().measured_files():
        try:
            _, statements, _, missing, _ = cov.analysis2(path)
        except coverage.CoverageException:
            continue
        pkg = package_of(path)
        totals[pkg][0] += len(statements)
        totals[pkg][1] += len(statements) - len(missing)
    failed = []
    print(f"\n{'package':28s} {'statements':>10s} {'covered':>8s} {'floor':>6s}")
    for pkg in sorted(set(totals) | set(floors)):
        n, hit = totals.get(pkg, (0, 0))
        pct = 100.0 * hit / n if n else 0.0
        floor = floors.get(pkg)
        mark = "" if floor is None or pct >= floor else "  BELOW FLOOR"
        print(f"{pkg:28s} {n:10d} {pct:7.1f}% {floor if floor is not None else '':>6}{mark}")
        if mark:
            failed.append(pkg)
    n = sum(v[0] for v in totals.values())
    hit = sum(v[1] for v in totals.values())
    print(f"{'total':28s} {n:10d} {100.0 * hit / max(1, n):7.1f}%")
    if failed:
        print(f"coverage below its floor in: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
