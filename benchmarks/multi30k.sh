#!/usr/bin/env bash
# Every Multi30k En->De figure of benchmarks/RESULTS.md, one stage at a time:
#
#   benchmarks/multi30k.sh ablation   # issue 5: three NAT arms (2000 updates each, side by side) + teacher
#   benchmarks/multi30k.sh baselines  # deep-encoder/shallow-decoder AR (80 min of training)
#   benchmarks/multi30k.sh speed      # speed, generate overhead, cost vs length (needs an idle machine)
#                                     # (the NAT and deep-shallow models have 128 positions: their length
#                                     # cost at 256 is timed with extended tables, see nat_hf.bench)
#   benchmarks/multi30k.sh quality    # quality and failure modes of every system of the speed run
#   benchmarks/multi30k.sh card       # the NAT model's card (model_cards/) from the speed and quality JSON
#   benchmarks/multi30k.sh singlepass-train  # issue 12: Mask-Predict, GLAT, CTC+GLAT, DAG+GLAT (upsampling 2, 4, 8), AXE
#                                             # (resumable: rerun after a kill, each run continues with --resume)
#   benchmarks/multi30k.sh singlepass-ablation  # issue 12: where distillation helps CTC+GLAT: the same recipe on the raw
#                                               # references, first 1000 updates (resumable)
#   benchmarks/multi30k.sh singlepass # issue 12: one speed + one quality run of those (the ones trained so far)
#                                     # beside the AR teacher; the GLAT, CTC and AXE model cards
#   benchmarks/multi30k.sh dag-decoding # issue 12: the DAG model's lookahead weight / Viterbi exponent on val and test
#   benchmarks/multi30k.sh dag-speed  # issue 12: the DAG model's decodings on torch/ORT, batch 1 and 64, vs AR greedy
#   benchmarks/multi30k.sh dag-ratio  # issue 12: DAG upsampling ratios 2/4/8 (those trained) on torch and ORT int8
#                                     # vs AR greedy and CTranslate2 int8, 1 and 2 threads; val and test BLEU
#   benchmarks/multi30k.sh dag-ratio-arch  # issue 12: the ratio's speed cost alone: the ratio-8 model's weights run
#                                          # at ratios 2, 4, 8 in one run beside AR greedy (speed only)
#   benchmarks/multi30k.sh speculative-train  # issue 13: greedy distillation, the CMLM drafter, the AR draft model
#   benchmarks/multi30k.sh adversarial-train  # issue 15: the trained CMLM drafter, 600 more updates without / with GAN
#   benchmarks/multi30k.sh adversarial # issue 15: quality (BLEU, chrF, repeats, length error) of both arms
#   benchmarks/multi30k.sh runtime    # issue 14: NAT on torch eager/compile/int8 and ONNX Runtime fp32/int8 vs
#                                     # CTranslate2 and AR greedy, 1 and 2 threads; BLEU; ONNX = torch counts
#   benchmarks/multi30k.sh speculative # issue 13: one speed + one quality run: NAT-drafted speculative decoding
#                                      # beside AR greedy, assisted generation (AR draft model), CTranslate2 greedy
#
# Each stage records its results (benchmarks/results.py) and re-renders RESULTS.md. Data and the teacher come
# from ../shared (override with NAT_HF_DATA_DIR / NAT_HF_TEACHER). Run from the repository root.
set -euo pipefail
[ -d .venv/bin ] && export PATH="$PWD/.venv/bin:$PATH"  # the README's environment, when present

export NAT_HF_DATA_DIR=${NAT_HF_DATA_DIR:-../shared/data/multi30k}
export NAT_HF_TEACHER=${NAT_HF_TEACHER:-../shared/models/ar-teacher-multi30k-en-de}
THREADS=${THREADS:-2}
NAT=${NAT:-runs/multi30k_cmlm_distill_arinit/best}  # the NAT model of the speed/quality comparison
DEEP_SHALLOW=runs/multi30k_ar_deep_shallow/best
TEST=$NAT_HF_DATA_DIR/test_2016_flickr
# AR output cap = the NAT models' longest output (max_target_positions 128), as in the teacher's eval.json and in
# distillation: a rare looping AR hypothesis then costs the same here as there (test sentence 315 loops).
AR_MAX=128
# the same-size AR teacher greedy, by transformers and by CTranslate2 int8 (the baselines of most stages)
AR_GREEDY="--system ar-greedy=$NAT_HF_TEACHER:num_beams=1,max_new_tokens=$AR_MAX"
CT2_INT8_GREEDY="--system ct2-int8-greedy=$NAT_HF_TEACHER:backend=ctranslate2,compute_type=int8,beam_size=1,max_decoding_length=$AR_MAX"
mkdir -p runs/bench

train_and_record() {  # CONFIG NAME
  nat-hf train "training/configs/$1.yaml"
  python benchmarks/results.py record "runs/$1" --name "$2" \
    --command "NAT_HF_DATA_DIR=$NAT_HF_DATA_DIR NAT_HF_TEACHER=$NAT_HF_TEACHER nat-hf train training/configs/$1.yaml"
}

train_resumable() {  # CONFIG: train and record it, unless recorded earlier; a killed run continues (--resume)
  [ -f "runs/$1/results.json" ] && return 0
  local resume=""
  [ -f "runs/$1/train_config.yaml" ] && resume="--resume"
  # TRAIN_OVERRIDES: section.key=value words for every run (e.g. run.threads=1 run.checkpoint_every=50 to train
  # two configs side by side, one core each), kept in the recorded command
  nat-hf train "training/configs/$1.yaml" ${TRAIN_OVERRIDES:-} $resume
  # RECORD_NOTE: what the numbers alone do not say (e.g. the run was paused: its training minutes count the pause)
  python benchmarks/results.py record "runs/$1" --name "$1" \
    --command "NAT_HF_DATA_DIR=$NAT_HF_DATA_DIR NAT_HF_TEACHER=$NAT_HF_TEACHER nat-hf train training/configs/$1.yaml${TRAIN_OVERRIDES:+ $TRAIN_OVERRIDES}" \
    ${RECORD_NOTE:+--note "$RECORD_NOTE"}
}

export_int8() {  # MODEL_DIR -> its fp32 + int8 export beside it
  [ -f "${1%/best}/onnx_int8/onnx_export.json" ] || nat-hf export "$1" "${1%/best}/onnx_int8" --int8 > /dev/null
}

teacher_card() {  # MODEL_DIR NAME [nat-hf card options]: the card of a model distilled from and initialised by the
  # shared teacher. The distilled data (../shared/data/multi30k/distill, see its README) has no distill_report.json:
  # say whose beam-4 outputs it holds; the teacher is not on the Hub: name it, and its data (no train_config.yaml).
  # CARD_NOTE: what the card's results alone do not say (e.g. the run is the first part of its recipe)
  local model=$1 name=$2
  shift 2
  nat-hf card "$model" --repo-id "nat-hf/$name" --copy-to "model_cards/$name.md" --distilled-by "$NAT_HF_TEACHER" \
    --distill-beams 4 --teacher-name ar-teacher-multi30k-en-de --teacher-data bentrevett/multi30k "$@" \
    ${CARD_NOTE:+--note "$CARD_NOTE"}
}

nat_systems() {  # one-pass and Mask-Predict 2/4/10 iterations x length beam 1/3/5
  echo "--system nat-1pass=$NAT:num_iterations=1,length_beam=1"
  for iterations in 2 4 10; do
    for beam in 1 3 5; do
      echo "--system mp${iterations}-lb${beam}=$NAT:num_iterations=$iterations,length_beam=$beam"
    done
  done
}

ar_systems() {  # same-size AR (the teacher: Marian 3+3, d_model 256) and the deep-shallow AR, by transformers
  echo "$AR_GREEDY"
  echo "--system ar-beam4=$NAT_HF_TEACHER:num_beams=4,max_new_tokens=$AR_MAX"
  echo "--system ar-deep-shallow-greedy=$DEEP_SHALLOW:num_beams=1,max_new_tokens=$AR_MAX"
}

ct2_systems() {  # the same-size AR run by CTranslate2 (speed only: fp32 output equals transformers greedy)
  echo "--system ct2-fp32-greedy=$NAT_HF_TEACHER:backend=ctranslate2,compute_type=default,beam_size=1,max_decoding_length=$AR_MAX"
  echo "$CT2_INT8_GREEDY"
}

case ${1:-} in
  ablation)
    # one thread each, side by side on the 2 cores: same updates for every arm, whatever the contention
    train_and_record multi30k_cmlm_raw_teachervocab ablation-1-cmlm-raw &
    train_and_record multi30k_cmlm_distill ablation-2-cmlm-distill &
    train_and_record multi30k_cmlm_distill_arinit ablation-3-cmlm-distill-arinit &
    wait
    command="nat-hf bench quality --system teacher-greedy=$NAT_HF_TEACHER:num_beams=1,max_new_tokens=$AR_MAX \
--system teacher-beam4=$NAT_HF_TEACHER:num_beams=4,max_new_tokens=$AR_MAX \
--system mp-raw=runs/multi30k_cmlm_raw_teachervocab/best:num_iterations=10,length_beam=5 \
--system mp-distill=runs/multi30k_cmlm_distill/best:num_iterations=10,length_beam=5 \
--system mp-distill-arinit=runs/multi30k_cmlm_distill_arinit/best:num_iterations=10,length_beam=5 \
--data-dir $NAT_HF_DATA_DIR --splits test_2016_flickr --threads $THREADS --output runs/bench/ablation.json"
    $command
    python benchmarks/results.py record-bench runs/bench/ablation.json --name ablation-quality --command "$command" \
      --gap-to teacher-greedy --gap-to teacher-beam4
    ;;
  baselines)
    train_and_record multi30k_ar_deep_shallow ar-deep-shallow
    ;;
  speed)
    command="nat-hf bench speed $(nat_systems) $(ar_systems) $(ct2_systems) --source $TEST.en --sentences 256 \
--batch-sizes 1,16,64,256 --repeats 3 --threads $THREADS --baseline ar-greedy --baseline ar-deep-shallow-greedy \
--baseline ct2-fp32-greedy --baseline ct2-int8-greedy --lengths 8,16,32,64,128,256 --output runs/bench/speed.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/speed.json --name speed --command "$command"
    ;;
  quality)
    command="nat-hf bench quality $(nat_systems) $(ar_systems) --data-dir $NAT_HF_DATA_DIR \
--splits val test_2016_flickr --threads $THREADS --output runs/bench/quality.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/quality.json --name quality --command "$command" \
      --gap-to ar-greedy --gap-to ar-beam4
    ;;
  card)
    teacher_card "$NAT" multi30k-en-de-cmlm-distill-arinit --speed runs/bench/speed.json \
      --quality runs/bench/quality.json
    ;;
  singlepass-train)
    for name in ${SINGLEPASS_CONFIGS:-multi30k_cmlm_distill_arinit multi30k_glat multi30k_ctc_glat multi30k_dag_glat \
        multi30k_axe multi30k_dag_glat_r2 multi30k_dag_glat_r8}; do
      train_resumable "$name"
    done
    ;;
  singlepass-ablation)
    # compared at the same updates with multi30k_ctc_glat's periodic validation (RESULTS.md, both records)
    train_resumable multi30k_ctc_glat_raw
    ;;
  speculative-train)
    # the teacher's greedy outputs on train (resumable by shards), then the NAT drafter and the AR draft model
    [ -f runs/distill_greedy/distill_report.json ] || nat-hf distill "$NAT_HF_TEACHER" --data-dir "$NAT_HF_DATA_DIR" \
      --output-dir runs/distill_greedy --num-beams 1 --threads "$THREADS"
    [ -f runs/ar_shallow_init/config.json ] || python training/shallow_ar.py "$NAT_HF_TEACHER" runs/ar_shallow_init \
      --decoder-layers 1
    train_resumable multi30k_cmlm_greedy_distill_arinit
    train_resumable multi30k_ar_shallow_draft
    train_resumable multi30k_cmlm_greedy_distill_arinit_suffix
    ;;
  speculative)
    drafter=runs/multi30k_cmlm_greedy_distill_arinit/best
    # the same drafter on ONNX Runtime (fp32): drafting costs less, the output is the teacher's all the same
    [ -f runs/multi30k_cmlm_greedy_distill_arinit/onnx/onnx_export.json ] || \
      nat-hf export $drafter runs/multi30k_cmlm_greedy_distill_arinit/onnx > /dev/null
    # the suffix-masked drafter (trained on prefix -> masked remainder, as drafting asks), torch and ONNX Runtime
    suffix=runs/multi30k_cmlm_greedy_distill_arinit_suffix/best
    suffix_systems=""
    if [ -f $suffix/config.json ]; then
      [ -f ${suffix%/best}/onnx/onnx_export.json ] || nat-hf export $suffix ${suffix%/best}/onnx > /dev/null
      # and its block size (at most 4 drafted tokens a round) and a refinement pass per draft
      suffix_systems="--system spec-nat-suffix=$NAT_HF_TEACHER:drafter=$suffix,max_new_tokens=$AR_MAX \
--system spec-nat-suffix-onnx=$NAT_HF_TEACHER:drafter=${suffix%/best}/onnx,max_new_tokens=$AR_MAX \
--system spec-nat-suffix-onnx-block4=$NAT_HF_TEACHER:drafter=${suffix%/best}/onnx,draft_size=4,max_new_tokens=$AR_MAX \
--system spec-nat-suffix-onnx-iter2=$NAT_HF_TEACHER:drafter=${suffix%/best}/onnx,draft_iterations=2,max_new_tokens=$AR_MAX"
    fi
    systems="$AR_GREEDY \
--system spec-nat=$NAT_HF_TEACHER:drafter=$drafter,max_new_tokens=$AR_MAX \
--system spec-nat-onnx=$NAT_HF_TEACHER:drafter=${drafter%/best}/onnx,max_new_tokens=$AR_MAX $suffix_systems \
--system assisted-ar=$NAT_HF_TEACHER:assistant=runs/multi30k_ar_shallow_draft/best,max_new_tokens=$AR_MAX \
--system ct2-greedy=$NAT_HF_TEACHER:backend=ctranslate2,beam_size=1,max_decoding_length=$AR_MAX \
--system drafter-1pass=$drafter:num_iterations=1,length_beam=1"
    # batch-1 latency (and same_output_as, the identity check) on 300 sentences; the quality run below checks the
    # whole test set batched (its hypotheses)
    command="nat-hf bench speed $systems --source $TEST.en --sentences 300 --batch-sizes 64 --repeats 2 \
--threads $THREADS --baseline ar-greedy --baseline ct2-greedy --output runs/bench/speculative_speed.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/speculative_speed.json --name speculative-speed \
      --command "$command"
    command="nat-hf bench quality $systems --data-dir $NAT_HF_DATA_DIR --splits test_2016_flickr \
--threads $THREADS --output runs/bench/speculative_quality.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/speculative_quality.json --name speculative-quality \
      --command "$command" --gap-to ar-greedy
    ;;
  singlepass)
    # every single-pass method beside Mask-Predict and the AR teacher; the DAG with its default decodings and with
    # the ones dag-decoding picked on val (lookahead weight 2.0, Viterbi length exponent 1.25; picked for ratio 4,
    # applied to ratios 2 and 8 as well); ratios 2/4/8. Then the fastest runtime of each one-pass decoder (ONNX
    # Runtime int8) against the fastest AR runtime (CTranslate2 int8 greedy), for the quality/speed frontier.
    # A model not trained yet (no runs/NAME/results.json) is left out of the run, and said so on stderr.
    systems="$AR_GREEDY \
--system ar-beam4=$NAT_HF_TEACHER:num_beams=4,max_new_tokens=$AR_MAX \
$CT2_INT8_GREEDY"
    with_trained() {  # RUN SYSTEM...: add each "NAME=OPTIONS" system of runs/RUN/best (ONNX: NAME=onnx:OPTIONS)
      local run=$1
      shift
      if [ ! -f "runs/$run/results.json" ]; then
        echo "singlepass: runs/$run is not trained yet; left out: $*" >&2
        return 0
      fi
      local system
      for system in "$@"; do
        case "$system" in
          *=onnx:*)
            export_int8 "runs/$run/best"
            systems="$systems --system ${system%%=*}=runs/$run/onnx_int8:int8=1,${system#*=onnx:}" ;;
          *) systems="$systems --system ${system%%=*}=runs/$run/best:${system#*=}" ;;
        esac
      done
    }
    with_trained multi30k_cmlm_distill_arinit mp-1pass=num_iterations=1,length_beam=1 \
      mp4-lb5=num_iterations=4,length_beam=5
    with_trained multi30k_glat glat-1pass=num_iterations=1,length_beam=1 glat-lb5=num_iterations=1,length_beam=5
    with_trained multi30k_ctc_glat ctc-glat=decoding_strategy=greedy
    with_trained multi30k_axe axe-1pass=length_beam=1
    with_trained multi30k_dag_glat dag-glat-greedy=decoding_strategy=greedy \
      dag-glat-lookahead=decoding_strategy=lookahead dag-glat-viterbi=decoding_strategy=viterbi \
      dag-glat-lookahead-w2.0=decoding_strategy=lookahead,lookahead_weight=2.0 \
      dag-glat-viterbi-e1.25=decoding_strategy=viterbi,viterbi_length_exponent=1.25
    with_trained multi30k_dag_glat_r2 dag-glat-r2-lookahead=decoding_strategy=lookahead \
      dag-glat-r2-lookahead-w2.0=decoding_strategy=lookahead,lookahead_weight=2.0
    with_trained multi30k_dag_glat_r8 dag-glat-r8-lookahead=decoding_strategy=lookahead \
      dag-glat-r8-lookahead-w2.0=decoding_strategy=lookahead,lookahead_weight=2.0
    with_trained multi30k_ctc_glat ctc-glat-ort-int8=onnx:decoding_strategy=greedy
    with_trained multi30k_dag_glat_r2 dag-glat-r2-lookahead-w2.0-ort-int8=onnx:decoding_strategy=lookahead,lookahead_weight=2.0
    with_trained multi30k_dag_glat dag-glat-lookahead-w2.0-ort-int8=onnx:decoding_strategy=lookahead,lookahead_weight=2.0
    with_trained multi30k_dag_glat_r8 dag-glat-r8-lookahead-w2.0-ort-int8=onnx:decoding_strategy=lookahead,lookahead_weight=2.0
    command="nat-hf bench speed $systems --source $TEST.en --sentences 256 --batch-sizes 1,64 --repeats 3 \
--threads $THREADS --baseline ar-greedy --baseline ct2-int8-greedy --output runs/bench/singlepass_speed.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/singlepass_speed.json --name singlepass-speed \
      --command "$command"
    command="nat-hf bench quality $systems --data-dir $NAT_HF_DATA_DIR --splits val test_2016_flickr \
--threads $THREADS --baseline ar-greedy --output runs/bench/singlepass_quality.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/singlepass_quality.json --name singlepass-quality \
      --command "$command" --gap-to ar-greedy --gap-to ar-beam4
    # the cards of the GLAT, CTC+GLAT and AXE models (those trained), from this run (the DAG models' come from the
    # runtime and dag-ratio stages)
    for spec in multi30k_glat:glat:glat-1pass,glat-lb5 multi30k_ctc_glat:ctc-glat:ctc-glat,ctc-glat-ort-int8 \
        multi30k_axe:axe:axe-1pass; do
      run=${spec%%:*} rest=${spec#*:}
      [ -f runs/$run/results.json ] || continue
      teacher_card runs/$run/best multi30k-en-de-${rest%%:*} --speed runs/bench/singlepass_speed.json \
        --quality runs/bench/singlepass_quality.json --systems ar-greedy,ct2-int8-greedy,${rest#*:}
    done
    ;;
  dag-decoding)
    # issue 12: the DAG+GLAT model's decoding settings on val (pick there, read test): lookahead's token weight
    # (beta) and Viterbi's length exponent, beside greedy and the AR teacher's greedy
    dag=runs/multi30k_dag_glat/best
    systems="$AR_GREEDY \
--system greedy=$dag:decoding_strategy=greedy"
    for weight in 0.5 1.0 1.5 2.0; do
      systems="$systems --system lookahead-w$weight=$dag:decoding_strategy=lookahead,lookahead_weight=$weight"
    done
    for exponent in 0.5 0.75 1.0 1.25 1.5; do
      systems="$systems --system viterbi-e$exponent=$dag:decoding_strategy=viterbi,viterbi_length_exponent=$exponent"
    done
    command="nat-hf bench quality $systems --data-dir $NAT_HF_DATA_DIR --splits val test_2016_flickr \
--threads $THREADS --output runs/bench/dag_decoding.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/dag_decoding.json --name dag-decoding \
      --command "$command" --gap-to ar-greedy --side-study
    ;;
  dag-ratio)
    # issue 12, the cost of the upsampling ratio: the DAG+GLAT models of ratio 2, 4 and 8 (those trained so far;
    # same recipe, 2000 updates each unless a run was cut short with optim.max_steps) with lookahead (weight 2.0, picked on val for ratio 4) on torch eager and
    # ONNX Runtime int8, beside the AR teacher greedy (transformers, CTranslate2 int8), batch 1 and 64, at 1 and
    # 2 threads (idle machine); then val and test BLEU of each. With all three ratios the records are dag-ratio-*;
    # with fewer (a model not trained yet, or lost with its machine) dag-ratio-r<ratios>-*, so that a partial run
    # never replaces a complete one: each ratio's speed-up is against the AR baselines of its own run. RECORD_NOTE:
    # a note for the records (e.g. a model trained for fewer than its 2000 updates); CARD_NOTE goes on every card
    # the stage writes (ratios 2 and 8), so run it with one only for a run that has a single such model.
    systems="$AR_GREEDY \
$CT2_INT8_GREEDY"
    ratios=""
    for ratio in 2 4 8; do
      run=runs/multi30k_dag_glat_r$ratio
      [ $ratio = 4 ] && run=runs/multi30k_dag_glat
      [ -f $run/results.json ] || continue
      ratios="$ratios-$ratio"
      export_int8 $run/best
      options=decoding_strategy=lookahead,lookahead_weight=2.0
      systems="$systems --system dag-r$ratio-eager=$run/best:$options \
--system dag-r$ratio-ort-int8=${run}/onnx_int8:int8=1,$options"
    done
    [ -n "$ratios" ] || { echo "dag-ratio: no DAG model trained (benchmarks/multi30k.sh singlepass-train)" >&2; exit 1; }
    record=dag-ratio output=dag_ratio
    [ "$ratios" = -2-4-8 ] || { record=dag-ratio-r${ratios#-}; output=dag_ratio_r${ratios#-}; }
    for threads in 1 2; do
      command="nat-hf bench speed $systems --source $TEST.en --sentences 256 --batch-sizes 1,64 --repeats 3 \
--threads $threads --baseline ar-greedy --baseline ct2-int8-greedy --output runs/bench/${output}_speed_${threads}thread.json"
      $command > /dev/null
      python benchmarks/results.py record-bench runs/bench/${output}_speed_${threads}thread.json \
        --name $record-speed-${threads}thread --command "$command" --side-study ${RECORD_NOTE:+--note "$RECORD_NOTE"}
    done
    command="nat-hf bench quality $systems --data-dir $NAT_HF_DATA_DIR --splits val test_2016_flickr \
--threads $THREADS --baseline ar-greedy --output runs/bench/${output}_quality.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/${output}_quality.json --name $record-quality \
      --command "$command" --gap-to ar-greedy --gap-to ct2-int8-greedy --side-study ${RECORD_NOTE:+--note "$RECORD_NOTE"}
    for ratio in 2 8; do  # the cards of the ratio-2/8 models, from this run (ratio 4's comes from the runtime stage)
      [ -f runs/multi30k_dag_glat_r$ratio/results.json ] || continue
      teacher_card runs/multi30k_dag_glat_r$ratio/best multi30k-en-de-dag-glat-r$ratio \
        --speed runs/bench/${output}_speed_2thread.json --quality runs/bench/${output}_quality.json \
        --systems ar-greedy,ct2-int8-greedy,dag-r$ratio-eager,dag-r$ratio-ort-int8
    done
    ;;
  dag-ratio-arch)
    # issue 12, the speed cost of the upsampling ratio alone, on one machine in one run: the trained ratio-8 model
    # run at 2, 4 and 8 vertices per source token (the same weights: the ratio sets only how many decoder positions
    # there are; no parameter depends on it), lookahead weight 2.0, beside the AR teacher greedy, 2 threads (idle
    # machine). Speed only: at a ratio it was not trained for, the model's output is no translation-quality figure.
    r8=runs/multi30k_dag_glat_r8/best options=decoding_strategy=lookahead,lookahead_weight=2.0
    [ -f $r8/config.json ] || { echo "dag-ratio-arch: train multi30k_dag_glat_r8 first (singlepass-train)" >&2; exit 1; }
    systems="$AR_GREEDY \
$CT2_INT8_GREEDY"
    for ratio in 2 4; do
      python - $r8 runs/bench/dag_r8_weights_r$ratio $ratio <<'PY'
import json, shutil, sys
source, target, ratio = sys.argv[1], sys.argv[2], float(sys.argv[3])
shutil.copytree(source, target, dirs_exist_ok=True)
with open(f"{target}/config.json") as file:
    config = json.load(file)
config["method_options"]["upsample_ratio"] = ratio
with open(f"{target}/config.json", "w") as file:
    json.dump(config, file, indent=2)
PY
      systems="$systems --system dag-r8-weights-r$ratio=runs/bench/dag_r8_weights_r$ratio:$options"
    done
    systems="$systems --system dag-r8=$r8:$options"
    command="nat-hf bench speed $systems --source $TEST.en --sentences 256 --batch-sizes 1,64 --repeats 3 \
--threads $THREADS --baseline ar-greedy --baseline ct2-int8-greedy --output runs/bench/dag_ratio_arch_speed.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/dag_ratio_arch_speed.json --name dag-ratio-arch-speed \
      --command "$command" --side-study ${RECORD_NOTE:+--note "$RECORD_NOTE"}
    ;;
  dag-speed)
    # issue 12: batch-1 latency and batch-64 throughput of the DAG+GLAT model's val-picked decodings (dag-decoding:
    # Viterbi with length exponent 1.25, the best on val; lookahead weight 2.0, the best lookahead on val) on torch
    # eager, torch.compile and ONNX Runtime fp32/int8, beside the AR teacher greedy (transformers, CTranslate2
    # int8); then the test BLEU of each (compile: eager's arithmetic) beside the AR systems', and how many outputs
    # equal eager's (idle machine for the speed run)
    dag=runs/multi30k_dag_glat/best onnx=runs/multi30k_dag_glat/onnx_int8
    [ -f $onnx/onnx_export.json ] || nat-hf export $dag $onnx --int8 > /dev/null
    systems="$AR_GREEDY \
$CT2_INT8_GREEDY"
    runtimes=""
    for decoding in lookahead-w2.0:decoding_strategy=lookahead,lookahead_weight=2.0 \
        viterbi-e1.25:decoding_strategy=viterbi,viterbi_length_exponent=1.25; do
      name=dag-${decoding%%:*} options=${decoding#*:}
      runtimes="$runtimes --system $name-eager=$dag:$options --system $name-ort=$onnx:$options \
--system $name-ort-int8=$onnx:int8=1,$options"
      systems="$systems --system $name-compile=$dag:compile=1,$options"
    done
    command="nat-hf bench speed $systems $runtimes --source $TEST.en --sentences 256 --batch-sizes 1,64 \
--repeats 3 --threads $THREADS --baseline ar-greedy --baseline ct2-int8-greedy --baseline dag-lookahead-w2.0-eager \
--output runs/bench/dag_runtime_speed.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/dag_runtime_speed.json --name dag-runtime-speed \
      --command "$command" --side-study
    command="nat-hf bench quality $(echo "$systems" | sed -E 's/--system [a-z0-9.-]+-compile=[^ ]+//g') $runtimes \
--data-dir $NAT_HF_DATA_DIR --splits test_2016_flickr --threads $THREADS --baseline dag-lookahead-w2.0-eager \
--baseline dag-viterbi-e1.25-eager --output runs/bench/dag_runtime_quality.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/dag_runtime_quality.json --name dag-runtime-quality \
      --command "$command" --gap-to ar-greedy --gap-to ct2-int8-greedy --side-study
    ;;
  adversarial-train)
    # issue 15: from the same trained one-pass CMLM model (speculative-train makes it), 600 more updates without and
    # with the adversarial term
    train_resumable multi30k_cmlm_continued
    train_resumable multi30k_cmlm_adversarial
    ;;
  adversarial)
    start=runs/multi30k_cmlm_greedy_distill_arinit/best
    systems=""
    for arm in start:$start continued:runs/multi30k_cmlm_continued/best adversarial:runs/multi30k_cmlm_adversarial/best
    do
      systems="$systems --system ${arm%%:*}-1pass=${arm#*:}:num_iterations=1,length_beam=1"
      systems="$systems --system ${arm%%:*}-mp4-lb3=${arm#*:}:num_iterations=4,length_beam=3"
    done
    command="nat-hf bench quality$systems --data-dir $NAT_HF_DATA_DIR --splits val test_2016_flickr \
--threads $THREADS --output runs/bench/adversarial_quality.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/adversarial_quality.json --name adversarial-quality \
      --command "$command"
    ;;
  runtime)
    # issue 14: a NAT model on optimised CPU runtimes (torch eager, torch.compile, torch int8, ONNX Runtime fp32 and
    # int8) against CTranslate2 fp32/int8 and transformers AR greedy, at 1 and 2 threads (needs an idle machine),
    # then the BLEU of each and, on the whole test set, how many ONNX outputs equal torch's for every decoding of
    # every trained method
    # the Mask-Predict model of the Multi30k comparisons (singlepass-train trains it): one pass and Mask-Predict
    nat=${RUNTIME_NAT:-runs/multi30k_cmlm_distill_arinit/best}
    export_int8 "$nat"
    onnx=${nat%/best}/onnx_int8
    speed_systems="$AR_GREEDY $(ct2_systems)"
    for decoding in 1pass:num_iterations=1,length_beam=1 mp2:num_iterations=2,length_beam=3 \
        mp4:num_iterations=4,length_beam=3; do
      name=${decoding%%:*} options=${decoding#*:}
      speed_systems="$speed_systems --system nat-$name-eager=$nat:$options --system nat-$name-compile=$nat:compile=1,$options \
--system nat-$name-int8=$nat:int8=1,$options --system nat-$name-ort=$onnx:$options \
--system nat-$name-ort-int8=$onnx:int8=1,$options"
    done
    # the single-pass model closest to AR quality (DAG+GLAT, ratio 4, lookahead with the weight dag-decoding picked
    # on val): torch eager and ONNX Runtime
    dag=runs/multi30k_dag_glat/best
    if [ -f "$dag/config.json" ]; then
      export_int8 "$dag"
      lookahead=decoding_strategy=lookahead,lookahead_weight=2.0
      speed_systems="$speed_systems --system dag-lookahead-eager=$dag:$lookahead \
--system dag-lookahead-ort=${dag%/best}/onnx_int8:$lookahead \
--system dag-lookahead-ort-int8=${dag%/best}/onnx_int8:int8=1,$lookahead"
    fi
    for threads in 1 2; do
      command="nat-hf bench speed $speed_systems --source $TEST.en --sentences 256 --batch-sizes 1,64,256 \
--repeats 2 --threads $threads --baseline ar-greedy --baseline ct2-int8-greedy \
--output runs/bench/runtime_speed_${threads}thread.json"
      $command > /dev/null
      python benchmarks/results.py record-bench runs/bench/runtime_speed_${threads}thread.json \
        --name runtime-speed-${threads}thread --command "$command"
    done
    # quality: the speed systems but compile (same arithmetic as eager), and torch vs ONNX fp32 for the other
    # trained methods' decodings (identity counts against each torch system)
    quality_systems=$(echo "$speed_systems" | sed -E 's/--system nat-[a-z0-9]+-compile=[^ ]+//g')
    baselines="--baseline nat-1pass-eager --baseline nat-mp2-eager --baseline nat-mp4-eager"
    [ -f "$dag/config.json" ] && baselines="$baselines --baseline dag-lookahead-eager"
    for spec in glat:multi30k_glat:num_iterations=1,length_beam=1 ctc-glat:multi30k_ctc_glat:decoding_strategy=greedy \
        axe:multi30k_axe:length_beam=1 \
        dag-greedy:multi30k_dag_glat:decoding_strategy=greedy dag-viterbi:multi30k_dag_glat:decoding_strategy=viterbi; do
      label=${spec%%:*} rest=${spec#*:}
      run=runs/${rest%%:*} options=${rest#*:}
      [ -f "$run/best/config.json" ] || continue
      export_int8 "$run/best"
      quality_systems="$quality_systems --system $label-eager=$run/best:$options --system $label-ort=$run/onnx_int8:$options \
--system $label-ort-int8=$run/onnx_int8:int8=1,$options"
      baselines="$baselines --baseline $label-eager"
    done
    command="nat-hf bench quality $quality_systems --data-dir $NAT_HF_DATA_DIR --splits test_2016_flickr \
--threads $THREADS $baselines --output runs/bench/runtime_quality.json"
    $command > /dev/null
    python benchmarks/results.py record-bench runs/bench/runtime_quality.json --name runtime-quality \
      --command "$command" --gap-to ct2-int8-greedy --gap-to nat-1pass-eager
    if [ -f "$dag/config.json" ]; then  # the DA-Transformer's card: its decodings on torch and ORT beside the AR
      teacher_card "$dag" multi30k-en-de-dag-glat --speed runs/bench/runtime_speed_2thread.json \
        --quality runs/bench/runtime_quality.json \
        --systems ar-greedy,ct2-int8-greedy,dag-lookahead-eager,dag-lookahead-ort,dag-lookahead-ort-int8,\
dag-greedy-eager,dag-greedy-ort-int8,dag-viterbi-eager,dag-viterbi-ort-int8
    fi
    ;;
  *)
    echo "usage: $0 ablation|baselines|speed|quality|card|singlepass-train|singlepass|speculative-train|speculative|\
adversarial-train|adversarial|runtime|dag-decoding|dag-speed|dag-ratio|dag-ratio-arch" >&2
    exit 2
    ;;
esac
