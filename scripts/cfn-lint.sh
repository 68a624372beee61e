#!/usr/bin/env bash
# Lints Sledge's CloudFormation template with cfn-lint.
#
#   scripts/cfn-lint.sh                  synthesize the CDK app, then lint its templates
#   scripts/cfn-lint.sh TEMPLATE...      lint the given templates (test/cdk/stack.test.ts does this)
#
# Synthesis runs cdk/app.ts directly (what `npx cdk synth` runs, with cdk.json's context
# loaded by the app itself) and skips bundling, which does not change the template. It needs
# no credentials and no network.
#
# Exit status: 0 when cfn-lint finds nothing beyond the rules ignored below, else cfn-lint's
# (2 errors, 4 warnings, 8 informational, or their sum).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Rules ignored because CDK's output triggers them by construction, not because of anything
# this project chose. Each needs a reason; anything else cfn-lint reports fails the lint.
ignored=(
  # W3005 "dependency already enforced by a GetAtt": aws-lambda's Function adds
  # `DependsOn: [<role>, <role default policy>]` so that the function is created only after its
  # inline policy exists (nothing else references the policy). The role half is redundant with
  # `Role: Fn::GetAtt <role>.Arn`, which cfn-lint points out; CDK emits it for every function.
  W3005
)

if ! command -v cfn-lint >/dev/null 2>&1; then
  echo "cfn-lint is not on PATH; install it with \`pip install cfn-lint\`" >&2
  exit 127
fi

templates=("$@")
if [ ${#templates[@]} -eq 0 ]; then
  out="$(mktemp -d "${TMPDIR:-/tmp}/sledge-synth-XXXXXX")"
  trap 'rm -rf "$out"' EXIT
  (cd "$root" && CDK_OUTDIR="$out" CDK_CONTEXT_JSON='{"sledge:skipBundling":true}' npx --no-install tsx cdk/app.ts)
  templates=("$out"/*.template.json)
fi

ignore_list="$(IFS=,; echo "${ignored[*]}")"
exec cfn-lint --ignore-checks "$ignore_list" -- "${templates[@]}"
