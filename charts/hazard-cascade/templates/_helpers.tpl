{{/*
Names, labels and the shared pieces of every Ray pod.
*/}}

{{/* Chart name, overridable. */}}
{{- define "hazard-cascade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release + chart name (or fullnameOverride). Kept to 40 characters so that
"<fullname>-<suffix>" stays within KubeRay's 47-character limit for RayService/RayJob names.
*/}}
{{- define "hazard-cascade.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value */}}
{{- define "hazard-cascade.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select this release's pods (used by the NetworkPolicy). */}}
{{- define "hazard-cascade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hazard-cascade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels for every object the chart renders. */}}
{{- define "hazard-cascade.labels" -}}
helm.sh/chart: {{ include "hazard-cascade.chart" . }}
{{ include "hazard-cascade.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hazard-cascade
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels for pod templates: stable across chart and model versions on purpose. Anything that
changes in rayClusterConfig makes KubeRay roll a whole new cluster (twice the GPUs during the
switch), so the chart/app version labels stay on the custom resources, not on their pods.
*/}}
{{- define "hazard-cascade.podLabels" -}}
{{ include "hazard-cascade.selectorLabels" . }}
app.kubernetes.io/part-of: hazard-cascade
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* ServiceAccount used by all Ray pods. */}}
{{- define "hazard-cascade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hazard-cascade.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: repository:tag, or repository:tag@digest when a digest is pinned. */}}
{{- define "hazard-cascade.image" -}}
{{- $img := printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- if .Values.image.digest }}
{{- $img = printf "%s@%s" $img .Values.image.digest }}
{{- end }}
{{- $img }}
{{- end }}

{{/*
Name of a RayJob: "<fullname>-<stage>[-<runId>]". The fullname part is shortened so the whole
name stays within KubeRay's 47-character limit. Call with (dict "root" $ "stage" "stage1").
*/}}
{{- define "hazard-cascade.jobName" -}}
{{- $root := .root }}
{{- $suffix := printf "-%s" .stage }}
{{- with $root.Values.jobs.runId }}
{{- $suffix = printf "%s-%s" $suffix . }}
{{- end }}
{{- $base := include "hazard-cascade.fullname" $root | trunc (int (sub 47 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s%s" $base $suffix }}
{{- end }}

{{/* Pod-level securityContext (restricted Pod Security Standard). */}}
{{- define "hazard-cascade.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level securityContext (restricted Pod Security Standard). */}}
{{- define "hazard-cascade.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: {{ .Values.securityContext.readOnlyRootFilesystem }}
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container resources with quantities quoted; `nvidia.com/gpu` in requests and limits (equal, as
Kubernetes wants for extended resources) only when gpus > 0. Call with a group (head/worker values).
*/}}
{{- define "hazard-cascade.resources" -}}
requests:
{{- range $k, $v := .resources.requests }}
  {{ $k }}: {{ $v | quote }}
{{- end }}
{{- if gt (int .gpus) 0 }}
  nvidia.com/gpu: {{ .gpus | quote }}
{{- end }}
limits:
{{- range $k, $v := .resources.limits }}
  {{ $k }}: {{ $v | quote }}
{{- end }}
{{- if gt (int .gpus) 0 }}
  nvidia.com/gpu: {{ .gpus | quote }}
{{- end }}
{{- end }}

{{/* Bytes of a `<n>Gi` value (the schema allows only whole GiB there). */}}
{{- define "hazard-cascade.gibBytes" -}}
{{- mul (int64 (trimSuffix "Gi" .)) 1073741824 }}
{{- end }}

{{/*
`ray start` parameters of a group: its rayStartParams plus object-store-memory (bytes) from its
objectStoreMemory, which must stay below /dev/shm (Ray puts the store there) and below the
container's memory limit. Call with (dict "root" $ "group" <group values> "where" "serve.worker").
*/}}
{{- define "hazard-cascade.rayStartParams" -}}
{{- $g := .group }}
{{- $store := include "hazard-cascade.gibBytes" $g.objectStoreMemory | int64 }}
{{- $shm := include "hazard-cascade.gibBytes" .root.Values.scratch.shmSizeLimit | int64 }}
{{- if ge $store $shm }}
{{- fail (printf "%s.objectStoreMemory (%s) must be smaller than scratch.shmSizeLimit (%s): Ray's object store lives in /dev/shm" .where $g.objectStoreMemory .root.Values.scratch.shmSizeLimit) }}
{{- end }}
{{- $memory := toString (default "" $g.resources.limits.memory) }}
{{- if and (regexMatch "^[1-9][0-9]*Gi$" $memory) (ge $store (include "hazard-cascade.gibBytes" $memory | int64)) }}
{{- fail (printf "%s.objectStoreMemory (%s) must be smaller than its memory limit (%s)" .where $g.objectStoreMemory $memory) }}
{{- end }}
{{- $params := merge (dict "object-store-memory" (toString $store)) (deepCopy (default dict $g.rayStartParams)) }}
{{- range $k, $v := $params }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end }}

{{/*
Tolerations of a group: its own, plus the `nvidia.com/gpu` taint GPU node pools carry (GKE, AKS,
the NVIDIA GPU Operator's guidance) when the group asks for GPUs and does not tolerate it yet.
*/}}
{{- define "hazard-cascade.tolerations" -}}
{{- $tolerations := default list .tolerations }}
{{- if gt (int .gpus) 0 }}
{{- $has := false }}
{{- range $tolerations }}{{ if eq (toString .key) "nvidia.com/gpu" }}{{ $has = true }}{{ end }}{{ end }}
{{- if not $has }}
{{- $tolerations = append $tolerations (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule") }}
{{- end }}
{{- end }}
{{- with $tolerations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
Writable scratch volumes (the root filesystem is read-only; volume names match KubeRay's), then
the `volumes` of values. Call with (dict "root" $ "serve" true|false).
*/}}
{{- define "hazard-cascade.volumes" -}}
{{- $v := .root.Values -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $v.scratch.tmpSizeLimit | quote }}
- name: ray-logs
  emptyDir:
    sizeLimit: {{ $v.scratch.rayTmpSizeLimit | quote }}
- name: cache
  emptyDir:
    sizeLimit: {{ $v.scratch.cacheSizeLimit | quote }}
- name: shared-mem
  emptyDir:
    medium: Memory
    sizeLimit: {{ $v.scratch.shmSizeLimit | quote }}
{{- range $v.volumes }}
- name: vol-{{ .name }}
  {{- with .persistentVolumeClaim }}
  persistentVolumeClaim:
    claimName: {{ .claimName }}
  {{- end }}
  {{- with .csi }}
  csi:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Mounts of the volumes above; the `volumes` of values are read-only in serve pods. */}}
{{- define "hazard-cascade.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: ray-logs
  mountPath: /tmp/ray
- name: cache
  mountPath: /home/ray/.cache
- name: shared-mem
  mountPath: /dev/shm
{{- range .root.Values.volumes }}
- name: vol-{{ .name }}
  mountPath: {{ .mountPath }}
  readOnly: {{ or (default false .readOnly) $.serve }}
{{- end }}
{{- end }}

{{/*
Environment of every Ray container: caches under the writable cache dir, S3 settings, S3
credentials by secretKeyRef, the serving API key (serve pods, unless serve.app.args.auth is
`disabled`; named by serve.app.args.api_key_env), then extraEnv.
Call with (dict "root" $ "serve" true|false).
*/}}
{{- define "hazard-cascade.env" -}}
{{- $v := .root.Values -}}
- name: HOME
  value: /home/ray
- name: XDG_CACHE_HOME
  value: /home/ray/.cache
- name: XDG_CONFIG_HOME
  value: /home/ray/.cache/config
- name: HF_HOME
  value: /home/ray/.cache/huggingface
- name: TRITON_CACHE_DIR
  value: /home/ray/.cache/triton
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- with $v.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $v.s3.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $v.s3CredentialsSecret.name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.s3CredentialsSecret.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.s3CredentialsSecret.secretAccessKeyKey }}
{{- if $v.s3CredentialsSecret.sessionTokenKey }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.s3CredentialsSecret.sessionTokenKey }}
{{- end }}
{{- end }}
{{- $args := $v.serve.app.args }}
{{- if and .serve (ne (default "api_key" $args.auth) "disabled") }}
- name: {{ default "HAZARD_API_KEY" $args.api_key_env }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.apiKeySecret.name }}
      key: {{ $v.apiKeySecret.key }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod template of a Ray head or worker.
Call with (dict
  "root" $                       chart root
  "group" <values of the group>  rayStartParams/resources/gpus/nodeSelector/...
  "component" "serve"            app.kubernetes.io/component label
  "container" "ray-head"         container name
  "head" true|false
  "serve" true|false             RayService pod (API key, serve port)
  "grace" <seconds>              terminationGracePeriodSeconds
  "where" "serve.worker"         values path of the group, for error messages
  "mountSAToken" true|false      only for a head that runs the autoscaler sidecar
)
*/}}
{{- define "hazard-cascade.rayPodTemplate" -}}
{{- $root := .root }}
{{- $g := .group -}}
metadata:
  labels:
    {{- include "hazard-cascade.podLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $g.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $g.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "hazard-cascade.serviceAccountName" $root }}
  automountServiceAccountToken: {{ .mountSAToken }}
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ .grace }}
  securityContext:
    {{- include "hazard-cascade.podSecurityContext" $root | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "hazard-cascade.tolerations" $g }}
  tolerations:
    {{- . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .container }}
      image: {{ include "hazard-cascade.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      ports:
        {{- if .head }}
        - name: gcs-server
          containerPort: 6379
        - name: dashboard
          containerPort: 8265
        - name: client
          containerPort: 10001
        {{- end }}
        {{- if .serve }}
        - name: serve
          containerPort: 8000
        {{- end }}
        - name: metrics
          containerPort: 8080
      env:
        {{- include "hazard-cascade.env" (dict "root" $root "serve" .serve) | nindent 8 }}
      resources:
        {{- include "hazard-cascade.resources" $g | nindent 8 }}
      securityContext:
        {{- include "hazard-cascade.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        {{- include "hazard-cascade.volumeMounts" (dict "root" $root "serve" .serve) | nindent 8 }}
  volumes:
    {{- include "hazard-cascade.volumes" (dict "root" $root "serve" .serve) | nindent 4 }}
{{- end }}

{{/* Head group spec. Call like rayPodTemplate. */}}
{{- define "hazard-cascade.headGroupSpec" -}}
rayStartParams:
  {{- include "hazard-cascade.rayStartParams" . | trim | nindent 2 }}
template:
  {{- include "hazard-cascade.rayPodTemplate" . | nindent 2 }}
{{- end }}

{{/* Worker group spec (one entry of workerGroupSpecs). Call like rayPodTemplate. */}}
{{- define "hazard-cascade.workerGroupSpec" -}}
{{- $g := .group -}}
- groupName: {{ $g.groupName }}
  replicas: {{ $g.replicas }}
  minReplicas: {{ hasKey $g "minReplicas" | ternary $g.minReplicas $g.replicas }}
  maxReplicas: {{ hasKey $g "maxReplicas" | ternary $g.maxReplicas $g.replicas }}
  numOfHosts: 1
  rayStartParams:
    {{- include "hazard-cascade.rayStartParams" . | trim | nindent 4 }}
  template:
    {{- include "hazard-cascade.rayPodTemplate" . | nindent 4 }}
{{- end }}

{{/* authOptions of a RayCluster spec; KubeRay's CRDs know it from 1.5.1 (kuberay.version). */}}
{{- define "hazard-cascade.authOptions" -}}
{{- if semverCompare ">=1.5.1" .Values.kuberay.version -}}
authOptions:
  mode: {{ .Values.rayAuth.mode }}
{{- end }}
{{- end }}
