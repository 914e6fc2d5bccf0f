"""Records: the SQLite store, reports and exports (xAPI, CSV), LRS sync."""
