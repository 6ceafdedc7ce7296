"""recsys: the library behind the seven pipeline stages (see README "Architecture").

Stage modules in `stages/` only read their params, call functions here and write outputs;
everything they compute lives in this package, one concern per module.
"""
