"""Text-to-SQL: datasets, schema prompts, sandboxed SQLite execution and execution-match rewards.

Modules:

* :mod:`~jaxrl_llm.envs.text2sql.dataset`: :class:`Text2SQLExample`, row validation, database
  resolution and the Spider / BIRD loaders;
* :mod:`~jaxrl_llm.envs.text2sql.schema`: reading ``CREATE TABLE`` statements and rendering prompts
  (``create`` or ``compact`` schema style);
* :mod:`~jaxrl_llm.envs.text2sql.synthetic`: five tiny databases and templated questions;
* :mod:`~jaxrl_llm.envs.text2sql.execution`: :func:`execute_readonly`, the layered read-only
  sandbox;
* :mod:`~jaxrl_llm.envs.text2sql.compare`: bag (Spider test-suite) and set (BIRD) result matching;
* :mod:`~jaxrl_llm.envs.text2sql.reward`: SQL extraction, :func:`make_text2sql_reward` and the
  :func:`sql_format` reward.
"""

from jaxrl_llm.envs.text2sql.compare import has_top_level_order_by, results_match
from jaxrl_llm.envs.text2sql.dataset import (BIRD_LAYOUT, SPIDER_LAYOUT, DatasetFormatError,
                                             DbResolver, Text2SQLExample, as_resolver,
                                             bird_db_resolver, check_db_id, directory_resolver,
                                             examples_to_rows, load_benchmark_rows, load_bird,
                                             load_spider,
                                             spider_db_resolver, validate_rows)
from jaxrl_llm.envs.text2sql.execution import (DENIED_FUNCTIONS, ERROR_KINDS, ExecutionResult,
                                               execute_readonly, open_readonly, split_statements)
from jaxrl_llm.envs.text2sql.reward import (extract_sql, is_single_select, make_text2sql_reward,
                                            sql_format)
from jaxrl_llm.envs.text2sql.schema import (SCHEMA_STYLES, TableSchema, read_schema,
                                            render_prompt, render_schema, render_table)
from jaxrl_llm.envs.text2sql.worker import QueryLimits, SQLWorkerPool, shared_pool
from jaxrl_llm.envs.text2sql.synthetic import (DB_IDS, DIFFICULTIES, SyntheticQuestion,
                                               build_synthetic_databases, generate_text2sql,
                                               synthetic_db_resolver, template_counts)

__all__ = [
    "BIRD_LAYOUT", "DB_IDS", "DENIED_FUNCTIONS", "DIFFICULTIES", "ERROR_KINDS", "SCHEMA_STYLES",
    "SPIDER_LAYOUT", "DatasetFormatError", "DbResolver", "ExecutionResult", "SyntheticQuestion",
    "TableSchema", "Text2SQLExample", "as_resolver", "bird_db_resolver",
    "build_synthetic_databases", "check_db_id", "directory_resolver", "examples_to_rows",
    "execute_readonly", "QueryLimits", "SQLWorkerPool", "shared_pool", "extract_sql", "generate_text2sql", "has_top_level_order_by",
    "is_single_select", "load_benchmark_rows", "load_bird", "load_spider", "make_text2sql_reward", "open_readonly",
    "read_schema", "render_prompt", "render_schema", "render_table", "results_match",
    "spider_db_resolver", "split_statements", "sql_format", "synthetic_db_resolver",
    "template_counts", "validate_rows",
]
