"""The batch stages before the student: ``teacher`` (the frozen CLIP over every image and
union box, into the teacher cache), ``detection`` (an object detector over a folder of
images, into the detections store) and ``tiny_fcos`` (the bundled benchmark's small detector
and its trainer). ``images`` (decoding into padded batches) serves the first two."""
