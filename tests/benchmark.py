"""Program evaluation time under mocks, for fleets of growing size. Prints figures; asserts nothing.

Keys are not generated (one made-up key answers for all), so the figures are the program's own
cost: validation, rendering and resource registration.
"""

import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from harness import run_program  # noqa: E402
from keys import openssh_private_key  # noqa: E402
from shape_mocks import ShapeMocks, _key_outputs  # noqa: E402

SIZES = [(1, 2), (5, 8), (20, 16)]  # hosts x instances per host
ONE_KEY = _key_outputs({"algorithm": "RSA", "rsaBits": 2048})
SSH_KEY = openssh_private_key()


class FastMocks(ShapeMocks):
    def new_resource(self, args):
        if args.typ == "tls:index/privateKey:PrivateKey":
            return f"{args.name}-id", {**args.inputs, **ONE_KEY}
        return super().new_resource(args)


def fleet_config(hosts: int, instances: int) -> dict[str, str]:
    return {
        "mailfleet:sshPrivateKey": SSH_KEY,
        "mailfleet:dkim": json.dumps([{"domain": "example.com", "selector": "s1"}]),
        "mailfleet:hosts": json.dumps([
            {"name": f"mx{h}", "address": f"mx{h}.example.com", "instances": [
                {"name": f"postfix-{h}-{i}", "ip": f"127.{h + 1}.0.{i + 10}", "hostname": f"s{i}.mx{h}.example.com"}
                for i in range(instances)]}
            for h in range(hosts)]),
    }


def main() -> None:
    print(f"{'hosts':>5} {'instances':>9} {'resources':>9} {'seconds':>8} {'ms/resource':>11}")
    for hosts, instances in SIZES:
        started = time.perf_counter()
        run = run_program(fleet_config(hosts, instances), FastMocks(), secret_keys=["mailfleet:sshPrivateKey"])
        seconds = time.perf_counter() - started
        count = len(run.monitor.registrations)
        print(f"{hosts:>5} {hosts * instances:>9} {count:>9} {seconds:>8.2f} {1000 * seconds / count:>11.2f}")


if __name__ == "__main__":
    main()
