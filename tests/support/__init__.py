"""What the tests share that is not a test or a fixture of one folder: the HTTP client
(client.py), the repository's paths and data files (paths.py, fixtures/), the sample
photos (photos.py), the GCS emulator (gcs.py), the workflow's step table as the tests
read it (steps.py) and the fault tests' checks (faults.py)."""
