{{/* Names and labels. */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.adminServiceName" -}}
{{- printf "%s-admin" (include "portcullis.fullname" . | trunc 57 | trimSuffix "-") -}}
{{- end -}}

{{- define "portcullis.secretName" -}}
{{- default (include "portcullis.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ include "portcullis.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Image: the tag defaults to the chart's appVersion; a digest wins over the tag. */}}
{{- define "portcullis.imageTag" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag: \"latest\" is not allowed; pin a version (the default is the chart's appVersion)" -}}
{{- end -}}
{{- $tag -}}
{{- end -}}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "portcullis.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{/*
A Portcullis duration ("500ms", "30s", "5m", "1h", "2d") in whole seconds, rounded up.
*/}}
{{- define "portcullis.durationSeconds" -}}
{{- $d := toString . | trim -}}
{{- $m := regexFind "^[0-9]+(ms|s|m|h|d)$" $d -}}
{{- if not $m -}}
{{- fail (printf "config.server.shutdown_grace: %q is not a duration like 30s, 5m or 500ms" $d) -}}
{{- end -}}
{{- $unit := regexFind "(ms|s|m|h|d)$" $d -}}
{{- $n := trimSuffix $unit $d | int64 -}}
{{- if eq $unit "ms" -}}{{- div (add $n 999) 1000 -}}
{{- else if eq $unit "s" -}}{{- $n -}}
{{- else if eq $unit "m" -}}{{- mul $n 60 -}}
{{- else if eq $unit "h" -}}{{- mul $n 3600 -}}
{{- else -}}{{- mul $n 86400 -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.shutdownGraceSeconds" -}}
{{- $server := default dict .Values.config.server -}}
{{- include "portcullis.durationSeconds" (default "30s" $server.shutdown_grace) -}}
{{- end -}}

{{- define "portcullis.terminationGracePeriodSeconds" -}}
{{- $needed := add (int64 .Values.lifecycle.preStopSleepSeconds) (include "portcullis.shutdownGraceSeconds" . | int64) -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $needed 5 -}}
{{- else if le (int64 .Values.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than lifecycle.preStopSleepSeconds + config.server.shutdown_grace (%d s), or the kubelet kills requests still draining" .Values.terminationGracePeriodSeconds $needed) -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* Session store checks: the memory store is per pod. */}}
{{- define "portcullis.validate" -}}
{{- $sessions := default dict .Values.config.sessions -}}
{{- $store := default "memory" $sessions.store -}}
{{- if eq $store "memory" -}}
{{- if .Values.autoscaling.enabled -}}
{{- fail "autoscaling.enabled needs config.sessions.store: redis. The memory session store lives in one pod: with several replicas a browser's session would exist on one pod only, and requests reaching another would be sent to sign in again. Configure config.sessions.redis (url, sentinel or cluster) and secrets.cookieKeys." -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- fail (printf "replicaCount: %d needs config.sessions.store: redis. The memory session store lives in one pod: with several replicas a browser's session would exist on one pod only, and requests reaching another would be sent to sign in again. Configure config.sessions.redis (url, sentinel or cluster) and secrets.cookieKeys, or set replicaCount: 1." (int .Values.replicaCount)) -}}
{{- end -}}
{{- end -}}
{{- if eq $store "redis" -}}
{{- if not $sessions.redis -}}
{{- fail "config.sessions.store: redis needs config.sessions.redis with one of url, sentinel or cluster" -}}
{{- end -}}
{{- if and (not .Values.secrets.existingSecret) (not .Values.secrets.cookieKeys) -}}
{{- fail "config.sessions.store: redis needs secrets.cookieKeys (or secrets.existingSecret with PORTCULLIS_SESSIONS__COOKIE__KEYS): every replica must open the others' cookies" -}}
{{- end -}}
{{- end -}}
{{- $auth := default dict .Values.config.auth -}}
{{- if $auth.assertion -}}
{{- if hasKey $auth.assertion "keys" -}}
{{- fail "config.auth.assertion.keys is the chart's: list the Secret's entries in assertion.keys (mounted at /etc/portcullis/assertion)" -}}
{{- end -}}
{{- if or (not .Values.assertion.existingSecret) (not .Values.assertion.keys) -}}
{{- fail "config.auth.assertion needs assertion.existingSecret and assertion.keys: a Secret of PEM private keys (the first signs). Without them every pod would generate its own key and upstreams could not verify the others' assertions" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret (tls.crt, tls.key), e.g. a cert-manager Certificate's spec.secretName" -}}
{{- end -}}
{{- if and (not .Values.listeners.plain.enabled) (not .Values.tls.enabled) -}}
{{- fail "listeners.plain.enabled is false and tls.enabled is false: Portcullis would have no listener" -}}
{{- end -}}
{{- $ext := default dict .Values.config.external_auth -}}
{{- if and (or $ext.nginx_path $ext.forward_auth_path $ext.envoy_path_prefix $ext.envoy_grpc) (not $ext.trusted_peers) -}}
{{- fail "config.external_auth needs trusted_peers: the CIDRs of the ingress controller's or gateway's pods (the default, loopback, would refuse every decision request in a cluster)" -}}
{{- end -}}
{{- if and .Values.externalAuth.fromNamespaces (not .Values.networkPolicy.enabled) -}}
{{- fail "externalAuth.fromNamespaces needs networkPolicy.enabled: true (it limits who reaches the proxy port)" -}}
{{- end -}}
{{- $issuers := default dict .Values.config.issuers -}}
{{- range $kind, $m := dict "clientSecrets" .Values.secrets.clientSecrets "sharedSecrets" .Values.secrets.sharedSecrets -}}
{{- range $name, $_ := $m -}}
{{- if not (hasKey $issuers $name) -}}
{{- fail (printf "secrets.%s.%s: no issuer %q in config.issuers" $kind $name $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $name, $_ := $issuers -}}
{{- if not (regexMatch "^[a-z0-9_-]+$" $name) -}}
{{- fail (printf "config.issuers.%s: issuer names must be lowercase letters, digits, \"_\" or \"-\" (secrets reach them as PORTCULLIS_ISSUERS__<NAME>__... variables, which are read lowercased)" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Portcullis configuration file: values.config plus the keys the chart owns. */}}
{{- define "portcullis.config" -}}
{{- $config := deepCopy (default dict .Values.config) -}}
{{- $listeners := dict -}}
{{- if .Values.listeners.plain.enabled -}}
{{- $_ := set $listeners "plain" (dict "address" (printf "0.0.0.0:%d" (int .Values.ports.http))) -}}
{{- end -}}
{{- if .Values.tls.enabled -}}
{{- $tls := dict "cert" "/etc/portcullis/tls/tls.crt" "key" "/etc/portcullis/tls/tls.key" "reload_interval" .Values.tls.reloadInterval -}}
{{- $_ := set $listeners "public" (dict "address" (printf "0.0.0.0:%d" (int .Values.ports.https)) "tls" $tls) -}}
{{- end -}}
{{- $_ := set $config "listeners" $listeners -}}
{{- $_ := set $config "admin" (dict "address" (printf "0.0.0.0:%d" (int .Values.ports.admin)) "max_connections" (int (default 64 .Values.adminMaxConnections))) -}}
{{- $_ := set $config "state_dir" "/var/lib/portcullis" -}}
{{- $auth := default dict $config.auth -}}
{{- if $auth.assertion -}}
{{- $keys := list -}}
{{- range .Values.assertion.keys -}}
{{- $keys = append $keys (printf "/etc/portcullis/assertion/%s" .) -}}
{{- end -}}
{{- $_ := set $auth.assertion "keys" $keys -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The Secret's variables (name -> value), when the chart creates the Secret. */}}
{{- define "portcullis.secretEnv" -}}
{{- $env := dict -}}
{{- range $name, $v := .Values.secrets.clientSecrets -}}
{{- $_ := set $env (printf "PORTCULLIS_ISSUERS__%s__CLIENT_SECRET" (upper $name)) (toString $v) -}}
{{- end -}}
{{- range $name, $v := .Values.secrets.sharedSecrets -}}
{{- $_ := set $env (printf "PORTCULLIS_ISSUERS__%s__SHARED_SECRET" (upper $name)) (toString $v) -}}
{{- end -}}
{{- $sessions := default dict .Values.config.sessions -}}
{{- if .Values.secrets.cookieKeys -}}
{{- $_ := set $env "PORTCULLIS_SESSIONS__COOKIE__KEYS" (toJson .Values.secrets.cookieKeys) -}}
{{- end -}}
{{- if and .Values.secrets.redisPassword (eq (default "memory" $sessions.store) "redis") -}}
{{- $_ := set $env "PORTCULLIS_SESSIONS__REDIS__PASSWORD" .Values.secrets.redisPassword -}}
{{- end -}}
{{- if .Values.secrets.adminToken -}}
{{- $_ := set $env "PORTCULLIS_ADMIN__TOKEN" .Values.secrets.adminToken -}}
{{- end -}}
{{- range $name, $v := .Values.secrets.extra -}}
{{- if not (hasPrefix "PORTCULLIS_" $name) -}}
{{- fail (printf "secrets.extra.%s: only PORTCULLIS_* variables belong here" $name) -}}
{{- end -}}
{{- $_ := set $env $name (toString $v) -}}
{{- end -}}
{{- toJson $env -}}
{{- end -}}

{{/* Label matchers selecting this release's series in alert expressions. */}}
{{- define "portcullis.ruleSelector" -}}
{{- default (printf "namespace=%q, service=%q" .Release.Namespace (include "portcullis.adminServiceName" .)) .Values.metrics.prometheusRule.selector -}}
{{- end -}}
