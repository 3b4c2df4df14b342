"""Analysis of cbexp runs: RD curves, BD-rate, the comparison table and paper-style figures.

    runs (MLflow) --runs.search_runs/runs_to_points--> points table --> bd / tables / figures
    published numbers --reference.published_points--> points table (same path)

``python -m cbexp.analysis`` (conf/analysis.yaml) runs the whole thing; ``report`` writes files.
"""
from cbexp.analysis.bd import anchor_map, bd_pair, bd_table
from cbexp.analysis.points import AnalysisError
from cbexp.analysis.reference import published_points
from cbexp.analysis.runs import runs_to_points, search_runs
from cbexp.analysis.tables import comparison_table, compressai_results, to_markdown

__all__ = ["AnalysisError", "anchor_map", "bd_pair", "bd_table", "comparison_table",
           "compressai_results", "published_points",
           "runs_to_points", "search_runs", "to_markdown"]
