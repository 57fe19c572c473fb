"""venv/bin/python -m mailfleet.config > schema/mailfleet-stack.schema.json"""

import json

from mailfleet.config.schema import stack_file_schema

print(json.dumps(stack_file_schema(), indent=2))
