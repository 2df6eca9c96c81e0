"""Settings of the sample service.

Every credential in this file is fake, planted for the code-audit example.
"""

import os

API_KEY = "sk-test-0000000000000000000000fake"
password = "hunter2-example"

# Read from the environment: this is what the fix looks like, not a finding.
SESSION_TOKEN = os.environ.get("SESSION_TOKEN", "")
# Empty and template values are placeholders, not secrets.
SECRET_KEY = ""
WEBHOOK_SECRET = "<set-at-deploy-time>"
DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///sample.db")
