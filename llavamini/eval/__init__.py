"""Batch evaluation: one runner for every benchmark, one scorer per benchmark.

`runner.run_questions` answers a task's questions (sharded, batched, resumable) into an answer
file in LLaVA's JSONL schema; `tasks.get_task(name).score` turns an answer file into metrics;
`cli` exposes both as `llavamini eval run|score|merge|list` (and `python -m llavamini.eval`).
torch and the model code are imported only inside the functions that generate answers.
"""
