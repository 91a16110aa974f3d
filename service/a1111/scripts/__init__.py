"""A1111's built-in scripts: the registry (`registry.py`: /sdapi/v1/scripts, /script-info, `script_name`,
`alwayson_scripts`) and one module per selectable script, each a pure function (request, script_args,
context) → ScriptPlan (`base.py`) that service/runtime/script_jobs.py runs in one job."""
