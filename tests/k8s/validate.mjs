// Validates Prometheus Operator resources against the operator's schemas (@kubernetes-models/prometheus-operator,
// generated from its API types). Reads a JSON array of resources on stdin; prints one JSON object:
// {"checked": [kind/name, ...], "errors": [message, ...]}. Exit 0 even with errors: the test reads them.
import { Probe } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/Probe";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const MODELS = { Probe, ServiceMonitor, PrometheusRule };
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const out = { checked: [], errors: [] };
for (const doc of JSON.parse(Buffer.concat(chunks).toString())) {
  const where = `${doc.kind}/${doc.metadata?.name}`;
  const Model = MODELS[doc.kind];
  if (doc.apiVersion !== "monitoring.coreos.com/v1" || !Model) {
    out.errors.push(`${where}: not a monitoring.coreos.com/v1 Probe, ServiceMonitor or PrometheusRule (${doc.apiVersion})`);
    continue;
  }
  try {
    new Model(doc).validate();
    out.checked.push(where);
  } catch (err) {
    out.errors.push(`${where}: ${err.message}`);
  }
}
process.stdout.write(JSON.stringify(out));
