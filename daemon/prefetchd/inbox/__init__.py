"""Request files: `parse` (pure: bytes in, request entries out), `watch` (the drop
folder and its processed/ and failed/ folders) and `receipts` (a consumer of events,
like the mirror)."""
