"""Soak: minutes of mixed traffic at 50 clients against a live service, then an integrity check.

Starts `python -m app` (default settings; `--env KEY=VALUE` to change one) on a free port with its state in a
temporary folder. Then `--clients` threads, each with its own connection, pick actions at random (weights below)
until `--minutes` have passed:
  search          POST /api/search with an eval photo at 640 px
  index           POST /api/faces with a new variant of an eval photo (cropped, mirrored, brightened,
                  re-encoded, and a JPEG comment naming it: distinct bytes each), with a subject and a source
  delete_id       DELETE /api/faces/{id} of a face this run indexed
  delete_file     DELETE /api/faces?file= of a source this run indexed
  delete_subject  DELETE /api/faces?subject= of a subject this run indexed (each subject: up to 3 uploads)
  hostile         one of: a 40000x40000 PNG bomb; a batch of flat 49 MP PNGs (32, over the request budget, and 4,
                  under it, in turn); a truncated JPEG; a non-image; a chunked upload over MAX_UPLOAD_MB
  disconnect      a raw socket to /api/search or /api/faces, closed after half the body, or right after the
                  whole request
A ledger keeps what was indexed and deleted (ids from the answers). An upload or delete whose outcome is not known
(no answer: a disconnect, a timeout, a transport error) is kept apart, never deleted later, and resolved after
the traffic by asking for the thumbnails of its ids (the ids follow from the bytes: uuid5(sha256, face index)).

After the traffic stops and the service is idle, the integrity checks:
  live faces served      GET /thumbs/{id} is 200 for every face indexed and not deleted
  found by own photo     a search with its own photo (top_k 100) finds every live face of a sample of 50 uploads
  erased not served      GET /thumbs/{id} is 404 for every deleted id, and no search of the check returns one
  delete answers         every delete answered 200 and named exactly the faces the ledger expected
  files = ledger         thumbnail files under THUMBS_DIR are exactly the live ids
  vectors = ledger       GET /status vectors equals the ledger's live count
  nothing pending        no file left under THUMBS_DIR/.pending
  healthy                GET /health is 200
  serves a search        a search is answered 200 (GET /health does not ask the engine)
Printed: answers per kind (status counts, p50/p95 latency), the checks (PASS/FAIL), the server's memory (warm RSS,
RSS over the run, peak VmHWM) and the errors in its log. Exit status 1 when an integrity check fails.

The modules: traffic (the clients' actions, photo variants, answers), ledger (what was indexed and deleted),
integrity (the checks), report (the printout); __main__ runs them.

    python -m bench.soak [--minutes 5] [--clients 50] [--seed 1]
"""
