"""A procedurally generated, structured video-text corpus: real H.264 clips with exact ground truth.

Why: a real dataset cannot tell whether a pre-training objective learned structure, and none is reachable
offline. This corpus carries exactly the structure the implemented methods exploit, and nothing else:
CLOP (objects, attributes, actions, relations; hard negatives that differ in one of them), S-ViLM (noun
phrases grounded to per-frame boxes; scene changes for temporal grouping) and Clover (nouns and verbs to
mask; QA). It is small enough to learn at 64x64 px from 8 frames on a CPU.

Content: each clip shows 1-3 non-overlapping objects on a dark flat or textured background; an object has a
shape, a colour, a size and an action (see `vocab.py`). Captions come from a grammar with paraphrases
(`captions.py`). Modules, in reading order: vocab -> scene (geometry, motion, drawing) -> captions ->
evalsets (hard negatives, QA) -> plan (splits, clips) -> video (mp4) -> layouts (files) -> corpus.

Layout of `out_dir` (video paths in native records are relative to `out_dir`):

    corpus.json                       manifest, written last: version, arguments, counts, vocabularies,
                                      held-out compositions, mc_answer_base, which file serves which task
    videos/{split}_{k:06d}.mp4        trimmed clips (num_frames frames at fps)
    untrimmed/untrimmed_{split}_{k:06d}.mp4
    {train,val,test}.jsonl            native records (`VideoRecord.to_dict()` per line), label = action_label
    untrimmed_{train,val,test}.jsonl  untrimmed records: segments [{start, end, label}], duration, one caption
                                      per segment (captions[k] describes segments[k])
    msrvtt/MSRVTT_data.json           MSR-VTT layout of the trimmed clips (split train/validate/test)
    msrvtt/MSRVTT_JSFUSION_{test,val}.csv   one caption per test (val) video (the 1k-A protocol)
    msrvtt/{train,val,test}_list.txt  video ids per split
    msrvtt/videos/video{N}.mp4        relative symlinks to ../../videos/{clip_id}.mp4
    eval/retrieval_{test,val}.jsonl   one caption per test (val) clip (native)
    eval/hard_negatives.jsonl         test's {video_id, video, msrvtt_id, caption, negatives: {shape, colour, size,
                                      action, relation: [captions differing in exactly that factor]},
                                      changes: {factor: [[old value, new value] per negative]}}
    eval/hard_negatives_val.jsonl     the same for val
    eval/mc_{test,val}.csv            MSRVTT-MC layout (tab-separated key vid_key video_id a1..a5 answer),
                                      answer 0-based
    eval/openqa_{train,val,test}.json MSRVTT-QA layout [{answer, id, question, video_id: N}]

Val carries the same evaluation sets as test, from its own clips: choices (weights, options, budgets) are made on
val (`eval.split=val`, `structvl demo --split val`), numbers are reported on test. With --holdout-compositions only
test shows held-out colour-shape pairs: choosing on them would leak the generalisation test into the selection.
    actions/classes.txt, actions/{train,val,test}.jsonl   action recognition (clips with an unambiguous label)
    localization/activitynet13.json   ActivityNet-1.3 localization ground truth for the untrimmed videos
    localization/activitynet_captions_{train,val,test}.json   ActivityNet Captions layout

Record `meta` of a trimmed clip:

    split, msrvtt_id ("video{N}"), background,
    objects: [{shape, colour, size, action, boxes: [[x0, y0, x1, y1] per frame, pixel edges: the object covers
               frame[y0:y1, x0:x1]], visible: [bool per frame] (False while a blinking object is off)}],
    relation: {subject, predicate, object} (object indices; "left of" | "right of" | "above" | "below") or null:
              the relation every caption states; two-object scenes only, and only when it holds unambiguously,
    phrases: [{caption_index, start, end (character span of a noun phrase), object}],
    action_label (the first object's action), action_label_unambiguous (no other object does something else),
    heldout_composition (the clip shows a held-out colour-shape pair), num_frames, fps
"""

from structvl.lab.synth.corpus import GENERATOR_VERSION, ensure_corpus, generate_corpus

__all__ = ["GENERATOR_VERSION", "ensure_corpus", "generate_corpus"]
