"""The command line: `launch` (the console script), `quick` (the socket path, which
imports almost nothing), `base` (io and the command table), `commands`, `fleet`,
`show` (how things are shown) and `completion`.

Empty on purpose: `prefetchd path ID` imports this package on its way to `quick`,
so nothing here may pull in the engine.
"""
