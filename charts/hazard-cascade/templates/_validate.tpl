{{/*
Cross-field checks the JSON schema cannot express. Each failure names the values to change.
*/}}
{{- define "hazard-cascade.validate.serve" -}}
{{- $s := .Values.serve }}
{{- $grace := float64 $s.terminationGracePeriodSeconds }}
{{- $gpuAsked := false }}
{{- range $name, $d := $s.deployments }}
{{- if ge (float64 $d.gracefulShutdownTimeoutS) $grace }}
{{- fail (printf "serve.deployments.%s.gracefulShutdownTimeoutS (%v) must be lower than serve.terminationGracePeriodSeconds (%v): Kubernetes would kill the pod before Serve drains in-flight requests" $name $d.gracefulShutdownTimeoutS $s.terminationGracePeriodSeconds) }}
{{- end }}
{{- if gt (int $d.autoscaling.minReplicas) (int $d.autoscaling.maxReplicas) }}
{{- fail (printf "serve.deployments.%s.autoscaling: minReplicas (%v) is greater than maxReplicas (%v)" $name $d.autoscaling.minReplicas $d.autoscaling.maxReplicas) }}
{{- end }}
{{- if and $d.rayActorOptions (gt (float64 (default 0 $d.rayActorOptions.numGpus)) 0.0) }}
{{- $gpuAsked = true }}
{{- end }}
{{- end }}
{{- $w := $s.worker }}
{{- if or (gt (int $w.minReplicas) (int $w.replicas)) (gt (int $w.replicas) (int $w.maxReplicas)) }}
{{- fail (printf "serve.worker: need minReplicas (%v) <= replicas (%v) <= maxReplicas (%v)" $w.minReplicas $w.replicas $w.maxReplicas) }}
{{- end }}
{{- if and $gpuAsked (eq (int $w.gpus) 0) }}
{{- fail "a serve deployment asks for GPUs (rayActorOptions.numGpus > 0) but serve.worker.gpus is 0: its replicas could never be scheduled" }}
{{- end }}
{{- if and (eq $s.app.engine "vllm") (eq (int $w.gpus) 0) }}
{{- fail "serve.app.engine is vllm, which has no CPU build: set serve.worker.gpus > 0 (see ci/gpu-values.yaml) or use engine transformers" }}
{{- end }}
{{- end }}
