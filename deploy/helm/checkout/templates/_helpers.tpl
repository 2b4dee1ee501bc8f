{{/* Names: <release>-checkout (or the release name when it holds "checkout"), 63 chars. */}}
{{- define "checkout.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's name: checkout.name (dict "root" $ "component" "server"). */}}
{{- define "checkout.name" -}}
{{- printf "%s-%s" (include "checkout.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "checkout.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "checkout.labels" -}}
{{ include "checkout.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* An image: checkout.image (dict "root" $ "image" .Values.images.app). */}}
{{- define "checkout.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* A headless Service's fully qualified name and a port: the wake-up targets. */}}
{{- define "checkout.headlessTarget" -}}
{{- printf "%s-headless.%s.svc.%s:%v" (include "checkout.name" .) .root.Release.Namespace .root.Values.clusterDomain .port -}}
{{- end -}}

{{/*
The restricted Pod Security profile, pod level: non-root, seccomp RuntimeDefault, and no
service account token (no process here calls the Kubernetes API).
*/}}
{{- define "checkout.podSecurity" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .uid }}
  runAsGroup: {{ .uid }}
  fsGroup: {{ .uid }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* The restricted profile, container level, with a read-only root file system. */}}
{{- define "checkout.containerSecurity" -}}
securityContext:
  runAsNonRoot: true
  allowPrivilegeEscalation: false
  privileged: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* Spread over nodes and zones: checkout.spread (dict "root" $ "component" "server"). */}}
{{- define "checkout.spread" -}}
{{- $ctx := . -}}
topologySpreadConstraints:
{{- range .root.Values.topologySpread }}
  - topologyKey: {{ .topologyKey }}
    maxSkew: {{ .maxSkew }}
    whenUnsatisfiable: {{ .whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "checkout.selectorLabels" $ctx | nindent 8 }}
{{- end }}
{{- end -}}

{{/* Scheduling values of one workload (nodeSelector, tolerations, affinity). */}}
{{- define "checkout.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Kafka: where, and how each process logs in (its user: .user, its Secret key: .key). */}}
{{- define "checkout.kafkaEnv" -}}
{{- $k := .root.Values.kafka -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ $k.bootstrapServers | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
{{- if hasPrefix "SASL_" $k.securityProtocol }}
- name: KAFKA_SASL_MECHANISM
  value: {{ $k.saslMechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ .user | quote }}
- name: KAFKA_SASL_PASSWORD_FILE
  value: /run/secrets/kafka/{{ .key }}
{{- end }}
{{- if $k.caSecret }}
- name: KAFKA_SSL_CAFILE
  value: /run/secrets/kafka-ca/ca.crt
{{- end }}
- name: KAFKA_TOPIC
  value: {{ $k.topic | quote }}
- name: STATUS_TOPIC
  value: {{ $k.statusTopic | quote }}
{{- end -}}

{{/* The Kafka Secret volumes of a pod (its password key: .key). */}}
{{- define "checkout.kafkaVolumes" -}}
{{- $k := .root.Values.kafka -}}
{{- if hasPrefix "SASL_" $k.securityProtocol }}
- name: kafka
  secret:
    secretName: {{ .root.Values.secrets.kafka }}
    items: [{ key: {{ .key }}, path: {{ .key }} }]
{{- end }}
{{- if $k.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ $k.caSecret }}
    items: [{ key: ca.crt, path: ca.crt }]
{{- end }}
{{- end -}}

{{- define "checkout.kafkaMounts" -}}
{{- $k := .root.Values.kafka -}}
{{- if hasPrefix "SASL_" $k.securityProtocol }}
- { name: kafka, mountPath: /run/secrets/kafka, readOnly: true }
{{- end }}
{{- if $k.caSecret }}
- { name: kafka-ca, mountPath: /run/secrets/kafka-ca, readOnly: true }
{{- end }}
{{- end -}}

{{/* What every process shares: logs, traces; then a workload's extra env (a map). */}}
{{- define "checkout.commonEnv" -}}
- name: LOG_FORMAT
  value: json
- name: LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
{{- with .root.Values.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- range $name, $value := .extra }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}
