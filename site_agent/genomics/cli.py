"""``site-agent genomics synth`` and ``site-agent genomics profile``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

_EXAMPLES = {  # also in site_agent/cli.py EXAMPLES
    "genomics synth": "genomics synth --out brca/ --patients 500 --seed 1",
    "genomics profile": "genomics profile --maf brca/mutations.maf --expression brca/expression.tsv "
                        "--linkage brca/linkage.csv --clinical brca/clinical.csv --out brca/profile",
}


def cmd_synth(args) -> int:
    from site_agent.genomics.synth import generate

    r = generate(Path(args.out), args.patients, args.seed, genes=args.genes, force=args.force)
    print(f"wrote {r.patients} synthetic patients ({r.variants} MAF rows, {r.genes} genes x samples) to {r.out}: "
          "mutations.maf, expression.tsv, linkage.csv, clinical.csv, truth.json")
    return 0


def cmd_profile(args) -> int:
    from optima_common.errors import ConfigError
    from site_agent.genomics.profile import run_profile, write_outputs

    if args.clinical is None and args.cdm is None:
        raise ConfigError("give --clinical FILE or --cdm URL (age, race and ER/PR/HER2 status)")
    if args.min_cell_count < 1:
        raise ConfigError("--min-cell-count must be at least 1")
    run = run_profile(args.maf, args.expression, args.linkage, clinical=args.clinical, cdm_url=args.cdm,
                      cdm_name=args.cdm_name, min_cell_count=args.min_cell_count, actionability=args.actionability,
                      top_genes=args.top_genes, pair_genes=args.pair_genes)
    paths = write_outputs(run, Path(args.out))
    for line in run.notes:
        print(f"note: {line}", file=sys.stderr)
    acc = run.accounting
    summary = {"out": str(args.out), "files": [p.name for p in paths], "maf_rows": acc["maf_rows"],
               "used": acc["used"], "skipped": acc["skipped"], "secondary_suppressions": run.secondary,
               "notes": run.notes}
    if getattr(args, "json", False):
        print(json.dumps(summary))
    else:
        skipped = ", ".join(f"{k} {v}" for k, v in acc["skipped"].items()) or "none"
        print(f"profiled: {acc['maf_rows']} MAF rows ({acc['used']} used, skipped: {skipped}); "
              f"{len(run.result.data)} released estimates, {run.secondary} secondary suppression(s); "
              f"wrote {', '.join(p.name for p in paths)} to {args.out}")
    return 0


def add_parsers(sub) -> None:
    g = sub.add_parser("genomics", help="mutation, expression and subtype profiling (aggregates only)")
    gs = g.add_subparsers(dest="genomics_command", required=True)
    p = gs.add_parser("synth", help="write a synthetic TCGA-BRCA-like site (MAF, expression, linkage, clinical)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--patients", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--genes", type=int, default=0, help="pad the expression matrix with filler genes up to this many")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=cmd_synth)
    p = gs.add_parser("profile", help="profile MAF + expression + clinical into a suppressed summarised_result")
    p.add_argument("--maf", required=True, nargs="+", type=Path, help="GDC MAF file(s), .maf or .maf.gz")
    p.add_argument("--expression", type=Path, help="genes x samples TSV (counts or TPM); without it, IHC surrogate")
    p.add_argument("--linkage", required=True, type=Path,
                   help="CSV sample_barcode,person_id; or 'cdm' for the OMOP specimen table of --cdm")
    p.add_argument("--clinical", type=Path, help="CSV person_id,age_at_diagnosis,sex,race,ethnicity,er/pr/her2_status")
    p.add_argument("--cdm", help="CDM URL: age, race, ethnicity and ER/PR/HER2 when --clinical is not given; "
                   "the specimen table with --linkage cdm")
    p.add_argument("--out", required=True, type=Path, help="folder for results.csv and the figures")
    p.add_argument("--cdm-name", default="site", help="cdm_name written in the results")
    p.add_argument("--min-cell-count", type=int, default=5)
    p.add_argument("--actionability", type=Path, help="the site's own actionability CSV (default: the shipped table)")
    p.add_argument("--top-genes", type=int, default=30, help="genes released in mutation_frequency")
    p.add_argument("--pair-genes", type=int, default=10, help="most mutated genes tested pairwise")
    p.add_argument("--json", action="store_true", help="one JSON summary line on stdout")
    p.set_defaults(func=cmd_profile)
