{{/*
Cross-field checks the JSON schema cannot express. Each failure names the values to change.
*/}}
{{- define "hazard-cascade.validate.serve" -}}
{{- $v := .Values }}
{{- $s := $v.serve }}
{{- $args := $s.app.args }}
{{- $w := $s.worker }}
{{- if or (gt (int $w.minReplicas) (int $w.replicas)) (gt (int $w.replicas) (int $w.maxReplicas)) }}
{{- fail (printf "serve.worker: need minReplicas (%v) <= replicas (%v) <= maxReplicas (%v)" $w.minReplicas $w.replicas $w.maxReplicas) }}
{{- end }}
{{- range $key := list "base_replicas" "specialist_replicas" }}
{{- $gpus := float64 (default 0 (get (default dict (get $args $key)) "num_gpus")) }}
{{- if and (gt $gpus 0.0) (eq (int $w.gpus) 0) }}
{{- fail (printf "serve.app.args.%s.num_gpus is %v but serve.worker.gpus is 0: its replicas could never be scheduled" $key $gpus) }}
{{- end }}
{{- if gt $gpus (float64 $w.gpus) }}
{{- fail (printf "serve.app.args.%s.num_gpus (%v) is more than one serve worker pod has (serve.worker.gpus %v)" $key $gpus $w.gpus) }}
{{- end }}
{{- end }}
{{- $engine := default "transformers" $args.engine }}
{{- if and (eq $engine "vllm") (eq (int $w.gpus) 0) }}
{{- fail "serve.app.args.engine is vllm, which has no CPU build: set serve.worker.gpus > 0 (see ci/gpu-values.yaml) or use engine transformers" }}
{{- end }}
{{- if and (eq $engine "vllm") (ne (default "float32" $args.dtype) "bfloat16") }}
{{- fail "serve.app.args.engine is vllm: set serve.app.args.dtype to bfloat16 (the models are trained and calibrated in it; float32 doubles GPU memory)" }}
{{- end }}
{{- range $role := list "base" "specialist" }}
{{- $uri := toString (get (default dict (get $args $role)) "model_uri") }}
{{- if not (hasPrefix "s3://" $uri) }}
{{- $path := trimPrefix "file://" $uri }}
{{- if not (hasPrefix "/" $path) }}
{{- fail (printf "serve.app.args.%s.model_uri %q: use s3://bucket/prefix, file:///absolute/path or an absolute path (the schemes hazard.infra.storage reads)" $role $uri) }}
{{- end }}
{{- $mounted := false }}
{{- range $v.volumes }}
{{- $mount := trimSuffix "/" .mountPath }}
{{- if or (eq $path $mount) (hasPrefix (printf "%s/" $mount) $path) }}{{ $mounted = true }}{{ end }}
{{- end }}
{{- if not $mounted }}
{{- fail (printf "serve.app.args.%s.model_uri %q is a local path, but no entry of `volumes` is mounted there: add one (e.g. a PersistentVolumeClaim at /mnt/models) or use s3://" $role $uri) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $s.initializingTimeout (regexMatch "^([0.]+(ns|us|µs|ms|s|m|h)?)+$" $s.initializingTimeout) }}
{{- fail (printf "serve.initializingTimeout %q is zero: KubeRay rejects it; give a positive duration (e.g. 15m) or \"\" to disable" $s.initializingTimeout) }}
{{- end }}
{{- $upgrade := $s.upgradeStrategy }}
{{- if eq $upgrade.type "NewClusterWithIncrementalUpgrade" }}
{{- if not (default dict $upgrade.clusterUpgradeOptions).gatewayClassName }}
{{- fail "serve.upgradeStrategy.type NewClusterWithIncrementalUpgrade needs serve.upgradeStrategy.clusterUpgradeOptions.gatewayClassName (a Gateway API GatewayClass)" }}
{{- end }}
{{- if not $s.autoscaler.enabled }}
{{- fail "serve.upgradeStrategy.type NewClusterWithIncrementalUpgrade needs serve.autoscaler.enabled: KubeRay moves capacity by Serve target_capacity, which the autoscaler turns into pods" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hazard-cascade.validate.metrics" -}}
{{- $v := .Values }}
{{- if and $v.metrics.podMonitor.enabled $v.networkPolicy.enabled (not $v.networkPolicy.metricsFrom.enabled) }}
{{- fail "metrics.podMonitor.enabled, but the NetworkPolicy blocks Ray's metrics port 8080: set networkPolicy.metricsFrom.enabled (and its selectors to your Prometheus)" }}
{{- end }}
{{- end }}

{{- define "hazard-cascade.validate.kuberay" -}}
{{- $v := .Values }}
{{- $supported := index .Chart.Annotations "hazard-cascade/kuberay-versions" }}
{{- if not (semverCompare $supported $v.kuberay.version) }}
{{- fail (printf "kuberay.version %s is outside the KubeRay versions this chart supports (%s, Chart.yaml annotation hazard-cascade/kuberay-versions): upgrade the operator or use a chart release that supports it" $v.kuberay.version $supported) }}
{{- end }}
{{- if and (eq $v.rayAuth.mode "token") (semverCompare "<1.5.1" $v.kuberay.version) }}
{{- fail (printf "rayAuth.mode token needs KubeRay >= 1.5.1 (authOptions), but kuberay.version is %s: upgrade the operator, or set rayAuth.mode disabled (Ray's dashboard and Jobs API then run without token auth)" $v.kuberay.version) }}
{{- end }}
{{- end }}
