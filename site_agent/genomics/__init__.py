"""Genomic and transcriptomic profiling at the site: MAF, expression, linkage, clinical -> aggregates.

Readers (:mod:`.readers`), a TCGA-BRCA-like generator (:mod:`.synth`), PAM50 and IHC-surrogate
subtypes (:mod:`.subtype`), ESTIMATE-style immune/stromal scores (:mod:`.immune`), the released
tables (:mod:`.analyses`), their release control (:mod:`.release`) and figures (:mod:`.plots`).
Shipped tables and their sources: ``data/SOURCES.md``.
"""
