{{/* Names, labels and the pieces every pod shares. */}}

{{- define "courier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "courier.fullname" -}}
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

{{/* A component's object name: <fullname>-<component>; call with (list $ "api"). */}}
{{- define "courier.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "courier.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "courier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (list $ "component"). */}}
{{- define "courier.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "courier.chart" $root }}
{{ include "courier.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: courier
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The immutable subset used in selectors; call with (list $ "component"). */}}
{{- define "courier.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "courier.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Labels shared by every pod of the release (NetworkPolicy selectors). */}}
{{- define "courier.instanceLabels" -}}
app.kubernetes.io/name: {{ include "courier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "courier.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "courier.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "courier.apiImage" -}}
{{- printf "%s:%s" .Values.api.image.repository (default .Chart.AppVersion .Values.api.image.tag) }}
{{- end }}

{{- define "courier.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) }}
{{- end }}

{{/* ---- Secrets: names, and values generated once then kept on upgrade ---- */}}

{{- define "courier.apiKeysSecretName" -}}
{{- default (include "courier.componentName" (list . "api-keys")) .Values.api.auth.existingSecret }}
{{- end }}

{{- define "courier.redisSecretName" -}}
{{- default (include "courier.componentName" (list . "redis")) .Values.redis.auth.existingSecret }}
{{- end }}

{{- define "courier.externalRedisSecretName" -}}
{{- default (include "courier.componentName" (list . "external-redis")) .Values.externalRedis.existingSecret }}
{{- end }}

{{- define "courier.flowerSecretName" -}}
{{- default (include "courier.componentName" (list . "flower")) .Values.flower.auth.existingSecret }}
{{- end }}

{{/*
The value under `key` of the Secret `name` as it is in the cluster (so `helm upgrade` keeps a
generated password), or "" on first install and wherever `lookup` sees no cluster (template,
dry runs). Call with (list $ name key).
*/}}
{{- define "courier.existingSecretValue" -}}
{{- $root := index . 0 }}
{{- $secret := lookup "v1" "Secret" $root.Release.Namespace (index . 1) | default dict }}
{{- dig "data" (index . 2) "" $secret | b64dec }}
{{- end }}

{{/* ---- Pod pieces ---- */}}

{{/* Topology spread for a component; call with (list $ "component" .Values.<component>). */}}
{{- define "courier.topologySpread" -}}
{{- $root := index . 0 }}
{{- $own := (index . 2).topologySpreadConstraints | default list }}
{{- if $own -}}
topologySpreadConstraints:
  {{- toYaml $own | nindent 2 }}
{{- else if $root.Values.topologySpread.enabled -}}
topologySpreadConstraints:
{{- range $root.Values.topologySpread.topologyKeys }}
  - maxSkew: {{ $root.Values.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "courier.selectorLabels" (list $root (index $ 1)) | nindent 8 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Scheduling fields of a pod spec from a component's values. */}}
{{- define "courier.scheduling" -}}
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
{{- end }}

{{/* Pod spec fields every Courier pod shares. */}}
{{- define "courier.podCommon" -}}
serviceAccountName: {{ include "courier.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Environment of the API, worker, beat and Flower containers: the ConfigMap, then the secrets.
COURIER_REDIS_URL uses Kubernetes' dependent variable expansion: $(REDIS_PASSWORD) is defined
just before it.
*/}}
{{- define "courier.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "courier.componentName" (list . "config") }}
{{- end }}

{{- define "courier.redisEnv" -}}
{{- if include "courier.sentinelMode" . -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "courier.redisSecretName" . }}
      key: {{ .Values.redis.auth.existingSecretPasswordKey }}
{{- /* The host is not used with Sentinel; the URL still gives the password and database. */}}
- name: COURIER_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "courier.componentName" (list . "redis-headless")) | quote }}
- name: COURIER_REDIS_SENTINELS
  value: {{ include "courier.sentinelAddresses" . | quote }}
- name: COURIER_REDIS_SENTINEL_MASTER
  value: {{ .Values.redis.sentinel.masterName | quote }}
{{- if .Values.redis.sentinel.auth.enabled }}
- name: COURIER_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- include "courier.sentinelSecretRef" . | nindent 6 }}
{{- end }}
{{- else if .Values.redis.enabled -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "courier.redisSecretName" . }}
      key: {{ .Values.redis.auth.existingSecretPasswordKey }}
- name: COURIER_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "courier.componentName" (list . "redis")) | quote }}
{{- else -}}
- name: COURIER_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "courier.externalRedisSecretName" . }}
      key: {{ .Values.externalRedis.existingSecretUrlKey }}
{{- with .Values.externalRedis.sentinels }}
- name: COURIER_REDIS_SENTINELS
  value: {{ join "," . | quote }}
- name: COURIER_REDIS_SENTINEL_MASTER
  value: {{ required "externalRedis.sentinelMaster is required with externalRedis.sentinels" $.Values.externalRedis.sentinelMaster | quote }}
{{- with $.Values.externalRedis.sentinelPasswordSecret }}
- name: COURIER_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.externalRedis.sentinelPasswordKey }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.config.email.smtp.existingSecret }}
- name: COURIER_SMTP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.config.email.smtp.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/* emptyDir volumes that make a read-only root filesystem work. */}}
{{- define "courier.tmpVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if .metrics }}
- name: metrics
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- end }}

{{- define "courier.tmpVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .metrics }}
- name: metrics
  mountPath: /run/metrics
{{- end }}
{{- end }}

{{/* Checksum of the ConfigMap, so a config change rolls the pods that read it. */}}
{{- define "courier.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}

{{/* Seconds the worker may take to stop: above the longest task. */}}
{{- define "courier.workerGracePeriod" -}}
{{- $limit := int .Values.config.taskTimeLimit }}
{{- $grace := .Values.worker.terminationGracePeriodSeconds | default (add $limit 30) | int }}
{{- if le $grace $limit }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) must exceed config.taskTimeLimit (%d) so running tasks finish on scale-down" $grace $limit) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* Seconds the API may take to stop: above preStop sleep + gunicorn's graceful timeout. */}}
{{- define "courier.apiGracePeriod" -}}
{{- $floor := add .Values.api.preStopSleepSeconds .Values.api.gracefulTimeout | int }}
{{- $grace := .Values.api.terminationGracePeriodSeconds | default (add $floor 10) | int }}
{{- if le $grace $floor }}
{{- fail (printf "api.terminationGracePeriodSeconds (%d) must exceed api.preStopSleepSeconds + api.gracefulTimeout (%d)" $grace $floor) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* The backlog query KEDA evaluates: each pod exports the same gauge, hence max by queue_name. */}}
{{- define "courier.backlogQuery" -}}
{{- printf "sum(max by (queue_name) (courier_queue_backlog{namespace=%q, %s, queue_name=~%q}))" .Release.Namespace (include "courier.jobSelector" .) (join "|" .Values.config.queues) }}
{{- end }}

{{/* Prometheus job names of the release's scrape targets (the monitors set them): the worker's
contains "celery", so celery-mixin's default selector job=~".*celery.*" finds it. */}}
{{- define "courier.apiJob" -}}
{{- .Values.monitoring.serviceMonitor.jobName | default (printf "%s-api" (include "courier.fullname" .)) }}
{{- end }}
{{- define "courier.workerJob" -}}
{{- .Values.monitoring.podMonitor.jobName | default (printf "%s-celery-worker" (include "courier.fullname" .)) }}
{{- end }}
{{- define "courier.jobSelector" -}}
{{- printf "job=~\"%s|%s\"" (include "courier.apiJob" .) (include "courier.workerJob" .) }}
{{- end }}

{{/* Redis maxmemory: redis.maxmemory as given, else redis.maxmemoryPercent of the redis
container's memory limit, in bytes (nothing without either). Above maxmemory Redis refuses
writes; the space left above it is for what it holds beyond its data: what draining a full queue
adds (results are written even when it is full), buffers, fragmentation. */}}
{{- define "courier.redisMaxmemory" -}}
{{- $r := .Values.redis }}
{{- $limit := dig "limits" "memory" "" $r.resources | toString }}
{{- if $r.maxmemory }}
{{- $r.maxmemory }}
{{- else if and $r.maxmemoryPercent $limit }}
{{- $number := regexFind "^[0-9.]+([eE][-+]?[0-9]+)?" $limit }}
{{- $suffix := trimPrefix $number $limit }}
{{- $units := dict "" 1.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 }}
{{- if or (not $number) (not (hasKey $units $suffix)) }}
{{- fail (printf "redis.resources.limits.memory %q: use a byte quantity such as 512Mi or 2Gi (or set redis.maxmemory)" $limit) }}
{{- end }}
{{- $bytes := mulf (float64 $number) (get $units $suffix) }}
{{- printf "%d" (int64 (floor (divf (mulf $bytes $r.maxmemoryPercent) 100))) }}
{{- end }}
{{- end }}

{{/* ---- Redis with Sentinel (redis.mode: sentinel) ---- */}}

{{/* "true" when the release runs its own Redis in sentinel mode, else "" (use with include). */}}
{{- define "courier.sentinelMode" -}}
{{- if and .Values.redis.enabled (eq .Values.redis.mode "sentinel") }}true{{ end }}
{{- end }}

{{/* Each Redis pod's stable DNS name through the headless Service, in ordinal order,
space-separated (`<statefulset>-<i>.<headless>.<namespace>.svc`: the pod's search path adds the
cluster domain, so no cluster domain is assumed). */}}
{{- define "courier.redisNodes" -}}
{{- $sts := include "courier.componentName" (list . "redis") }}
{{- $headless := include "courier.componentName" (list . "redis-headless") }}
{{- $nodes := list }}
{{- range $i := until (int .Values.redis.sentinel.replicas) }}
{{- $nodes = append $nodes (printf "%s-%d.%s.%s.svc" $sts $i $headless $.Release.Namespace) }}
{{- end }}
{{- join " " $nodes }}
{{- end }}

{{/* COURIER_REDIS_SENTINELS: every pod's Sentinel, so a client skips one that is down. */}}
{{- define "courier.sentinelAddresses" -}}
{{- $addresses := list }}
{{- range splitList " " (include "courier.redisNodes" .) }}
{{- $addresses = append $addresses (printf "%s:26379" .) }}
{{- end }}
{{- join "," $addresses }}
{{- end }}

{{/* name/key of the Sentinel password: its own Secret, or the Redis password's. */}}
{{- define "courier.sentinelSecretRef" -}}
{{- $auth := .Values.redis.sentinel.auth }}
{{- if $auth.existingSecret -}}
name: {{ $auth.existingSecret }}
key: {{ $auth.existingSecretPasswordKey }}
{{- else -}}
name: {{ include "courier.redisSecretName" . }}
key: {{ .Values.redis.auth.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/* Sentinel quorum: redis.sentinel.quorum, else a majority; with a check of the pod count. */}}
{{- define "courier.sentinelQuorum" -}}
{{- $n := int .Values.redis.sentinel.replicas }}
{{- if or (lt $n 3) (eq (mod $n 2) 0) }}
{{- fail (printf "redis.sentinel.replicas (%d) must be odd and at least 3: a majority of Sentinels must survive the loss of a pod" $n) }}
{{- end }}
{{- $quorum := .Values.redis.sentinel.quorum | default (add (div $n 2) 1) | int }}
{{- if gt $quorum $n }}
{{- fail (printf "redis.sentinel.quorum (%d) cannot exceed redis.sentinel.replicas (%d)" $quorum $n) }}
{{- end }}
{{- $quorum }}
{{- end }}

{{/* Environment the Redis and Sentinel containers share in sentinel mode (files/redis/lib.sh). */}}
{{- define "courier.sentinelPodEnv" -}}
{{- if .Values.redis.sentinel.auth.enabled }}
- name: SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- include "courier.sentinelSecretRef" . | nindent 6 }}
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: REDIS_NODES
  value: {{ include "courier.redisNodes" . | quote }}
- name: REDIS_PORT
  value: "6379"
- name: SENTINEL_PORT
  value: "26379"
- name: SENTINEL_MASTER
  value: {{ .Values.redis.sentinel.masterName | quote }}
{{- end }}
