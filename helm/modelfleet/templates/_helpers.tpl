{{/* The chart name, overridable. */}}
{{- define "modelfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: <release>-modelfleet, or the release name alone when it
already contains the chart name (so `helm install modelfleet` does not say it twice).
Kubernetes names are limited to 63 characters for Services, hence the truncation.
*/}}
{{- define "modelfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "modelfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object. The component label is added by each object (see
modelfleet.labels), so a Service can say it is the metrics endpoint without a
duplicate key.
*/}}
{{- define "modelfleet.commonLabels" -}}
helm.sh/chart: {{ include "modelfleet.chart" . }}
app.kubernetes.io/name: {{ include "modelfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelfleet
{{- end }}

{{/* Labels of the operator's own objects. */}}
{{- define "modelfleet.labels" -}}
{{ include "modelfleet.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels that select the operator pod; they never change across upgrades. */}}
{{- define "modelfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "modelfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelfleet.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "modelfleet.rayImage" -}}
{{- printf "%s:%s" .Values.rayImage.repository (default .Chart.AppVersion .Values.rayImage.tag) }}
{{- end }}

{{/* The namespaces watched with scope "namespaces", as a list. */}}
{{- define "modelfleet.watchedNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- toJson (uniq .Values.watch.namespaces) }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{- define "modelfleet.webhookServiceName" -}}
{{- printf "%s-webhook" (include "modelfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelfleet.webhookSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "modelfleet.fullname" .)) .Values.webhook.tls.secretName }}
{{- end }}

{{/*
The operator's RBAC rules are not written here: they are the rules of manifests/rbac/,
which the operator's authors keep least-privilege, copied into the chart's rbac/ folder
by manifests/install/generate (a test fails when the copy drifts). This returns, as
JSON, the rules of the object of kind .kind in the chart file .file.
Usage: include "modelfleet.rbacRules" (dict "file" "rbac/x.yaml" "kind" "Role" "root" $)
*/}}
{{- define "modelfleet.rbacRules" -}}
{{- $text := .root.Files.Get .file }}
{{- if not $text }}
{{- fail (printf "the chart has no %s: run manifests/install/generate" .file) }}
{{- end }}
{{- $rules := list }}
{{- $found := false }}
{{- range $doc := regexSplit "(?m)^---\\s*$" $text -1 }}
{{- $obj := fromYaml $doc }}
{{- if eq (get $obj "kind") $.kind }}
{{- $rules = $obj.rules }}
{{- $found = true }}
{{- end }}
{{- end }}
{{- if not $found }}
{{- fail (printf "%s has no %s" .file .kind) }}
{{- end }}
{{- toJson $rules }}
{{- end }}

{{/*
Fails rendering with a readable message for combinations the schema cannot express.
Included once, from the Deployment.
*/}}
{{- define "modelfleet.validate" -}}
{{- if and .Values.watch.namespaces (ne .Values.watch.scope "namespaces") }}
{{- fail "watch.namespaces is only used with watch.scope=namespaces; set watch.scope=namespaces or remove watch.namespaces" }}
{{- end }}
{{- if and .Values.webhook.tls.secretName (not .Values.webhook.tls.caBundle) }}
{{- fail "webhook.tls.secretName needs webhook.tls.caBundle: the base64 PEM of the CA that signed the Secret's certificate" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor selects that Service" }}
{{- end }}
{{- if .Values.kuberay.enabled }}
{{- $kuberay := index .Subcharts "kuberay-operator" }}
{{- if or (not $kuberay) (hasSuffix "-placeholder" $kuberay.Chart.Version) }}
{{- fail "kuberay.enabled=true needs the KubeRay operator chart: run `helm dependency update` on this chart first (it downloads charts/kuberay-operator-*.tgz), or install KubeRay yourself and keep kuberay.enabled=false" }}
{{- end }}
{{- end }}
{{- end }}
