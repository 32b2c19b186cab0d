{{/* Names, labels and shared values. Every helper starts with "tw.". */}}

{{- define "tw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "tw.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "tw.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tw.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "tw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tw.selector" -}}
app.kubernetes.io/name: {{ include "tw.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tw.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.images.tag -}}
{{- printf "%s%s:%s" .root.Values.images.registry .image $tag -}}
{{- end -}}

{{- define "tw.configSecret" -}}
{{- default (printf "%s-gateway-config" (include "tw.fullname" .)) .Values.configSecretName -}}
{{- end -}}

{{- define "tw.redisUrl" -}}
{{- if eq .Values.redis.mode "builtin" -}}
{{- printf "redis://%s-redis:6379/0" (include "tw.fullname" .) -}}
{{- else -}}
{{- .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{- define "tw.otlpEndpoint" -}}
{{- if .Values.tracing.otlpEndpoint -}}
{{- .Values.tracing.otlpEndpoint -}}
{{- else if .Values.tracing.jaeger.enabled -}}
{{- if eq .Values.tracing.protocol "grpc" -}}
{{- printf "http://%s-jaeger:4317" (include "tw.fullname" .) -}}
{{- else -}}
{{- printf "http://%s-jaeger:4318" (include "tw.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by the sidecar and the operator: Redis and its password. */}}
{{- define "tw.redisEnv" -}}
- name: TOLLWAY_REDIS_URL
  value: {{ include "tw.redisUrl" . | quote }}
{{- if and (eq .Values.redis.mode "external") .Values.redis.external.passwordSecret.name }}
- name: TOLLWAY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.passwordSecret.name }}
      key: {{ .Values.redis.external.passwordSecret.key }}
{{- end }}
{{- end -}}

{{/* The meter's Redis, from the same URL and password Secret as the others. The meter reads only a
URL (`tollway meter run --redis`), so the password goes into it by Kubernetes' $(VAR) expansion of the
variable defined just before; so for the meter the password must not hold "/", "?", "#" or "%"
(URL syntax; the sidecar and the operator read the same Secret raw). */}}
{{- define "tw.meterRedisEnv" -}}
{{- $password := and (eq .Values.redis.mode "external") .Values.redis.external.passwordSecret.name -}}
{{- if $password -}}
- name: TOLLWAY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.passwordSecret.name }}
      key: {{ .Values.redis.external.passwordSecret.key }}
{{ end -}}
- name: TOLLWAY_REDIS_URL
  {{- if $password }}
  value: {{ regexReplaceAll "^(rediss?://)" (include "tw.redisUrl" .) "${1}:$(TOLLWAY_REDIS_PASSWORD)@" | quote }}
  {{- else }}
  value: {{ include "tw.redisUrl" . | quote }}
  {{- end }}
{{- end -}}

{{/* The bundled trial PostgreSQL: its objects' name (also its Secret's and Service's). */}}
{{- define "tw.postgresqlName" -}}
{{- printf "%s-postgresql" (include "tw.fullname" .) -}}
{{- end -}}

{{/* Is the bundled PostgreSQL deployed? (The schema refuses it without the meter.) */}}
{{- define "tw.postgresqlBundled" -}}
{{- if and .Values.meter.enabled .Values.meter.postgresql.bundled.enabled -}}true{{- end -}}
{{- end -}}

{{/* The meter's TOLLWAY_METER_DB: your Secret, or the bundled PostgreSQL's (schema: exactly one). */}}
{{- define "tw.meterDatabaseEnv" -}}
- name: TOLLWAY_METER_DB
  valueFrom:
    secretKeyRef:
      {{- if include "tw.postgresqlBundled" . }}
      name: {{ include "tw.postgresqlName" . }}
      key: dsn
      {{- else }}
      name: {{ required "meter.database.existingSecret: the Secret holding the ledger's DSN (or set meter.postgresql.bundled.enabled=true for a trial)" .Values.meter.database.existingSecret }}
      key: {{ .Values.meter.database.key }}
      {{- end }}
{{- end -}}

{{/* The bundled PostgreSQL's password: the one in its Secret if that exists (PostgreSQL took it when
it created its data folder, so an upgrade must not change it), else the values', else a random one. */}}
{{- define "tw.postgresqlPassword" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "tw.postgresqlName" .) -}}
{{- $kept := "" -}}
{{- if $secret -}}
{{- $kept = index ($secret.data | default dict) "password" | default "" | b64dec -}}
{{- end -}}
{{- coalesce $kept .Values.meter.postgresql.bundled.password (randAlphaNum 32) -}}
{{- end -}}

{{/* The Redis port, for the meter's NetworkPolicy: the URL's, else Redis' default. */}}
{{- define "tw.redisPort" -}}
{{- $host := (urlParse (include "tw.redisUrl" .)).host -}}
{{- if regexMatch ":[0-9]+$" $host -}}
{{- regexFind "[0-9]+$" $host -}}
{{- else -}}
6379
{{- end -}}
{{- end -}}

{{/* The sidecar's worker processes: gateway.sidecarWorkers, else one per core of the sidecar's CPU
limit (rounded up: "1500m" is 2), else 1. Envoy's bootstrap and the sidecar must agree on it. */}}
{{- define "tw.sidecarWorkers" -}}
{{- $limit := dig "limits" "cpu" "" .Values.gateway.resources.sidecar | toString -}}
{{- if .Values.gateway.sidecarWorkers -}}
{{- int .Values.gateway.sidecarWorkers -}}
{{- else if hasSuffix "m" $limit -}}
{{- max 1 (ceil (divf (trimSuffix "m" $limit | float64) 1000)) | int -}}
{{- else if $limit -}}
{{- max 1 (ceil ($limit | float64)) | int -}}
{{- else -}}
1
{{- end -}}
{{- end -}}
